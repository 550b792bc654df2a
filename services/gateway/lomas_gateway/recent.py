"""The gateway's in-memory caches share one bounded map: entries kept most recently used first, the
least recently used ones dropped once the entries' total size passes a bound (a count, or bytes)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(_: object) -> int:
    return 1


class RecentlyUsed(Generic[K, V]):
    """A map of at most `max_size` in total, each value weighing `size(value)` (1 by default)."""

    def __init__(self, max_size: int, size: Callable[[V], int] = _one) -> None:
        self._max_size = max_size
        self._size = size
        self._total = 0
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Keep `value` (replacing `key`'s), unless it alone weighs more than the bound."""
        self.pop(key)
        weight = self._size(value)
        if weight > self._max_size:
            return
        self._entries[key] = value
        self._total += weight
        while self._total > self._max_size:
            self.pop(next(iter(self._entries)))

    def pop(self, key: K) -> None:
        gone = self._entries.pop(key, None)
        if gone is not None:
            self._total -= self._size(gone)

    def __len__(self) -> int:
        return len(self._entries)
