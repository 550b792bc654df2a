"""A thread-safe LRU cache bounded by bytes, for loaded datasets.

Entries are keyed by (dataset name, version): a new version of a dataset is a new key, and the old
one ages out (and `invalidate_dataset` drops every version of a name at once). A value holds the
Arrow table and what each engine prepares from it, on first use by that engine: the SQLite copy that
smartnoise-sql queries (the expensive part, ~6.5 s per million rows), the Polars frame and the CSV
text that OpenDP reads. A preparation grows its entry: the cache re-measures it (`refresh`) and
evicts others to stay under its byte budget.

Only tables held in memory are cached, and the byte budget is theirs: datasets that stay where they
are (PostgreSQL tables and Spark folders, whose queries run in the database or in Spark, and large
Parquet files that OpenDP Polars plans scan lazily) never enter this cache (`QueryEngine.prepared`
gives their engines a reader or a scan instead: `lomas_executor.pushdown`).

Concurrent misses for the same key load once: the first caller loads (outside the cache lock, so
other keys stay served), the others wait for its result or its exception. Failed loads are not
cached. Evicted values are only dropped: callers still using one keep it alive until they finish.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import pyarrow as pa

from lomas_executor.smartnoise_sql import SqliteTableReader

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
P = TypeVar("P")

SQL_READER = "smartnoise_sql"  # the name of smartnoise-sql's preparation

DatasetKey = tuple[str, int]  # (dataset name, version)


class LoadedDataset:
    """One dataset version in memory: the Arrow table and what each engine prepared from it."""

    def __init__(self, table: pa.Table, sql_reader: SqliteTableReader | None = None) -> None:
        self.table = table
        self._lock = threading.Lock()
        self._prepared: dict[str, tuple[object, int]] = {}
        self._building: dict[str, threading.Lock] = {}
        if sql_reader is not None:
            self._prepared[SQL_READER] = (sql_reader, sql_reader.nbytes)

    def prepared(self, name: str, build: Callable[[pa.Table], P], size_of: Callable[[P], int]) -> P:
        """What engine `name` prepares from the table, built once (concurrent callers wait)."""
        with self._lock:
            entry = self._prepared.get(name)
            if entry is not None:
                # One engine prepares each name, always with the same `build`: the same type.
                return cast(P, entry[0])
            building = self._building.setdefault(name, threading.Lock())
        with building:
            with self._lock:
                entry = self._prepared.get(name)
            if entry is not None:
                return cast(P, entry[0])
            value = build(self.table)
            with self._lock:
                self._prepared[name] = (value, int(size_of(value)))
            return value

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._prepared

    @property
    def sql_reader(self) -> SqliteTableReader:
        with self._lock:
            entry = self._prepared.get(SQL_READER)
        if entry is None or not isinstance(entry[0], SqliteTableReader):
            raise LookupError("the smartnoise-sql reader is not prepared")
        return entry[0]

    @property
    def nbytes(self) -> int:
        """Memory estimate: the Arrow buffers plus the measured size of each preparation."""
        with self._lock:
            return int(self.table.nbytes) + sum(size for _, size in self._prepared.values())


@dataclass
class _Pending(Generic[V]):
    done: threading.Event = field(default_factory=threading.Event)
    value: V | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


class ByteLruCache(Generic[K, V]):
    """LRU cache holding at most `max_bytes` (by `size_of`) of values.

    A value larger than `max_bytes` on its own is returned to its caller but not kept.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._pending: dict[K, _Pending[V]] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        """The cached value for `key`, loading it with `load()` on a miss (once across threads)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return entry[0]
            self._misses += 1
            pending = self._pending.get(key)
            leader = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()

        if not leader:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            # Set by the leader before `done` (a V, which may itself be None when V allows it).
            return cast(V, pending.value)

        try:
            value = load()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.error = exc
            pending.done.set()
            raise
        size = self._size_of(value)
        with self._lock:
            del self._pending[key]
            if size <= self._max_bytes:
                self._entries[key] = (value, size)
                self._bytes += size
                self._evict_over_budget()
        pending.value = value
        pending.done.set()
        return value

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def invalidate(self, key: K) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry[1]

    def invalidate_where(self, predicate: Callable[[K], bool]) -> int:
        """Drop every entry whose key matches; returns how many were dropped."""
        with self._lock:
            doomed = [key for key in self._entries if predicate(key)]
            for key in doomed:
                self._bytes -= self._entries.pop(key)[1]
            return len(doomed)

    def refresh(self, key: K) -> None:
        """Re-measure `key`'s value (it grew in place) and evict others to fit the byte budget.

        A value that alone exceeds the budget is dropped from the cache (its users keep it).
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            size = self._size_of(entry[0])
            self._bytes += size - entry[1]
            if size > self._max_bytes:
                del self._entries[key]
                self._bytes -= size
                self._evictions += 1
                return
            self._entries[key] = (entry[0], size)
            self._entries.move_to_end(key)
            self._evict_over_budget()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                entries=len(self._entries),
                bytes=self._bytes,
                max_bytes=self._max_bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )

    def _evict_over_budget(self) -> None:
        while self._bytes > self._max_bytes and self._entries:
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size
            self._evictions += 1


class DatasetCache(ByteLruCache[DatasetKey, LoadedDataset]):
    """The executor's cache of loaded datasets, keyed by (dataset name, version)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, size_of=lambda loaded: loaded.nbytes)

    def invalidate_dataset(self, name: str, *, older_than: int | None = None) -> int:
        """Drop the cached versions of dataset `name` (only those below `older_than` if given)."""
        return self.invalidate_where(
            lambda key: key[0] == name and (older_than is None or key[1] < older_than)
        )
