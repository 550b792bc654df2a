"""Memos for pure work smartnoise-sql queries repeat: once per process.

* `CalibrationMemo`: a noise mechanism's scale and privacy loss (`smartnoise_mechanisms`), found by
  a numeric search over OpenDP measurements (about 20 ms for Laplace, up to a second for Gaussian).
* the parse of an XPath string, which the library repeats a dozen times per query; `install()`
  patches it into the library (idempotently), and `lomas_executor.smartnoise_sql` calls it on import.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from snsql.xpath.parse import XPath

Value = TypeVar("Value")


class CalibrationMemo(Generic[Value]):
    """A bounded, thread-safe LRU of values that are pure functions of their key.

    A mechanism's calibration depends only on its class and inputs (epsilon, delta, sensitivity,
    contributions, integer or not), which form the key, each with its Python type so that 1 and
    1.0 stay distinct keys. Failures are not memoised.
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._values: OrderedDict[Hashable, Value] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                self.hits += 1
                return self._values[key]
        value = compute()  # outside the lock: concurrent misses may both compute (same result)
        with self._lock:
            self.misses += 1
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self._maxsize:
                self._values.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self.hits = 0
            self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


def _install_xpath_memo() -> None:
    """smartnoise-sql finds nodes of a query's syntax tree with XPath strings, all constants of the
    library (`//AggFunction`, `//Column`...), and parses each one again with an ANTLR parser at every
    use: a dozen times per query, about 40 % of the time it takes to price one. A parsed XPath is
    never changed once built, so each string is parsed once per process (idempotent)."""
    parse = XPath.__dict__["parse"]
    if getattr(parse, "__wrapped__", None) is not None:
        return
    parsed = functools.lru_cache(maxsize=256)(lambda path: parse(XPath(), path))

    @functools.wraps(parse)
    def memoised_parse(self: XPath, statement: str) -> Any:
        return parsed(statement)

    XPath.parse = memoised_parse


def install() -> None:
    _install_xpath_memo()
