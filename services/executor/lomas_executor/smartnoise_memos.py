"""Memos patched into smartnoise-sql, once per process, where the library repeats pure work.

`install()` puts both in place (idempotently); `lomas_executor.smartnoise_sql` calls it on import:
* the noise scale of a mechanism, which the library finds by a numeric search at every use;
* the parse of an XPath string, which the library repeats a dozen times per query.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from snsql.sql._mechanisms.gaussian import Gaussian
from snsql.sql._mechanisms.laplace import Laplace
from snsql.xpath.parse import XPath

# -- noise-scale memoisation -----------------------------------------------------------------------


class NoiseScaleMemo:
    """A bounded, thread-safe LRU of noise scales found by smartnoise-sql's binary searches.

    `Laplace._compute_noise_scale` and `Gaussian._compute_noise_scale` search, with OpenDP, the
    smallest scale that meets (epsilon[, delta]) for a clamped sum over bounds (lower, upper) with
    `max_contrib` contributions. Their result depends only on the mechanism class and those inputs
    (plus the bit depth for Gaussian), all of which form the key, each with its Python type so that
    1 and 1.0 stay distinct keys. Failures are not memoised. On a hit the Gaussian search's side
    effect `set_default_int_type(bit_depth)` is skipped: `release` and `accuracy` set it again
    themselves.
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._scales: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(mechanism: Any) -> Hashable:
        inputs = (
            mechanism.epsilon,
            mechanism.delta,
            mechanism.lower,
            mechanism.upper,
            mechanism.max_contrib,
            mechanism.bit_depth,
        )
        return (type(mechanism), *((type(value), value) for value in inputs))

    def wrap(self, search: Callable[[Any], None]) -> Callable[[Any], None]:
        @functools.wraps(search)  # sets `__wrapped__`: `_install_noise_scale_memo` looks for it
        def compute_noise_scale(mechanism: Any) -> None:
            if mechanism.scale is not None:
                return
            key = self.key(mechanism)
            with self._lock:
                scale = self._scales.get(key)
                if scale is not None:
                    self._scales.move_to_end(key)
                    self.hits += 1
            if scale is not None:
                mechanism.scale = scale
                return
            search(mechanism)  # outside the lock: concurrent misses may both search (same result)
            found = _scale_of(mechanism)
            with self._lock:
                self.misses += 1
                self._scales[key] = found
                self._scales.move_to_end(key)
                while len(self._scales) > self._maxsize:
                    self._scales.popitem(last=False)

        compute_noise_scale.__doc__ = f"Memoised by lomas_executor: {search.__doc__ or ''}"
        return compute_noise_scale

    def clear(self) -> None:
        with self._lock:
            self._scales.clear()
            self.hits = 0
            self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._scales)


def _scale_of(mechanism: Any) -> float:
    # A function, so the type checker does not keep `scale` narrowed to None across the search.
    return float(mechanism.scale)


NOISE_SCALE_MEMO = NoiseScaleMemo(maxsize=4096)


def _install_noise_scale_memo() -> None:
    """Route both mechanisms' searches through the memo, once per process (idempotent)."""
    for mechanism_class in (Laplace, Gaussian):
        search = mechanism_class.__dict__["_compute_noise_scale"]
        if getattr(search, "__wrapped__", None) is not None:
            continue
        mechanism_class._compute_noise_scale = NOISE_SCALE_MEMO.wrap(search)


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
    _install_noise_scale_memo()
    _install_xpath_memo()
