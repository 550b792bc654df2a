from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pytest

from lomas_executor import smartnoise_sql
from lomas_executor.cache import ByteLruCache, DatasetCache, LoadedDataset
from lomas_executor.metadata import DatasetMetadata


def _value(size: int) -> Callable[[], bytes]:
    return lambda: b"x" * size


def test_least_recently_used_entries_are_evicted_by_bytes() -> None:
    cache: ByteLruCache[str, bytes] = ByteLruCache(max_bytes=10, size_of=len)
    cache.get_or_load("a", _value(4))
    cache.get_or_load("b", _value(4))
    cache.get_or_load("a", _value(4))  # a is now the most recently used
    cache.get_or_load("c", _value(4))  # 12 bytes > 10: b goes
    assert cache.keys() == ["a", "c"]
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses, stats.evictions) == (
        2,
        8,
        1,
        3,
        1,
    )
    cache.get_or_load("d", _value(9))  # needs both a and c gone
    assert cache.keys() == ["d"]
    assert cache.stats().bytes == 9


def test_a_value_larger_than_the_budget_is_returned_but_not_kept() -> None:
    cache: ByteLruCache[str, bytes] = ByteLruCache(max_bytes=10, size_of=len)
    cache.get_or_load("small", _value(3))
    assert cache.get_or_load("huge", _value(11)) == b"x" * 11
    assert cache.keys() == ["small"]
    assert cache.get("huge") is None


def test_concurrent_misses_for_one_key_load_once() -> None:
    cache: ByteLruCache[tuple[str, int], object] = ByteLruCache(max_bytes=100, size_of=lambda _: 1)
    calls = 0
    calls_lock = threading.Lock()
    start = threading.Barrier(8)

    def load() -> object:
        nonlocal calls
        with calls_lock:
            calls += 1
        time.sleep(0.2)
        return object()

    results: list[object] = []

    def worker() -> None:
        start.wait()
        results.append(cache.get_or_load(("penguin", 1), load))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == 1
    assert len(results) == 8
    assert all(result is results[0] for result in results)


def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache: ByteLruCache[str, str] = ByteLruCache(max_bytes=100, size_of=len)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def failing() -> str:
        time.sleep(0.2)
        raise OSError("source down")

    def worker() -> None:
        start.wait()
        try:
            cache.get_or_load("k", failing)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 4
    assert cache.keys() == []
    assert cache.get_or_load("k", lambda: "ok") == "ok"


def test_other_keys_are_served_while_one_loads() -> None:
    cache: ByteLruCache[str, str] = ByteLruCache(max_bytes=100, size_of=len)
    cache.get_or_load("fast", lambda: "v")
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        return "slow"

    thread = threading.Thread(target=cache.get_or_load, args=("slow", slow))
    thread.start()
    try:
        began = time.perf_counter()
        assert cache.get_or_load("fast", lambda: pytest.fail("must be a hit")) == "v"
        assert time.perf_counter() - began < 1
    finally:
        release.set()
        thread.join()


def test_dataset_cache_sizes_entries_by_table_and_sqlite_bytes(
    penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    table = pa.Table.from_pandas(penguin_frame, preserve_index=False)
    loaded = LoadedDataset(table, smartnoise_sql.prepare_reader(table, penguin_md))
    assert loaded.sql_reader.nbytes > 0
    assert loaded.nbytes == table.nbytes + loaded.sql_reader.nbytes
    cache = DatasetCache(max_bytes=2 * loaded.nbytes)
    cache.get_or_load(("penguin", 1), lambda: loaded)
    cache.get_or_load(("penguin", 2), lambda: loaded)
    cache.get_or_load(("penguin", 3), lambda: loaded)
    assert cache.keys() == [("penguin", 2), ("penguin", 3)]


def test_a_value_that_grows_is_remeasured_and_evicts_others() -> None:
    sizes = {"a": 40, "b": 40}
    cache: ByteLruCache[str, str] = ByteLruCache(max_bytes=100, size_of=lambda v: sizes[v])
    cache.get_or_load("a", lambda: "a")
    cache.get_or_load("b", lambda: "b")
    sizes["a"] = 70  # "a" prepared something: it grew in place
    cache.refresh("a")
    assert cache.keys() == ["a"] and cache.stats().bytes == 70
    sizes["a"] = 150  # alone over the budget: dropped (its users keep their reference)
    cache.refresh("a")
    assert cache.keys() == [] and cache.stats().bytes == 0
    cache.get_or_load("b", lambda: "b")
    cache.get_or_load("c", lambda: "b")
    assert cache.invalidate_where(lambda key: key == "b") == 1
    assert cache.keys() == ["c"]


def test_preparations_are_built_once_and_counted(
    penguin_frame: pd.DataFrame, penguin_md: DatasetMetadata
) -> None:
    table = pa.Table.from_pandas(penguin_frame, preserve_index=False)
    loaded = LoadedDataset(table)
    builds = []

    def build(t: pa.Table) -> str:
        builds.append(1)
        time.sleep(0.05)
        return "x" * 1000

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: loaded.prepared("text", build, len), range(4)))
    assert results == ["x" * 1000] * 4 and builds == [1]
    assert loaded.has("text") and loaded.nbytes == table.nbytes + 1000
    cache = DatasetCache(max_bytes=10**9)
    cache.get_or_load(("penguin", 1), lambda: loaded)
    cache.get_or_load(("penguin", 2), lambda: LoadedDataset(table))
    cache.get_or_load(("other", 1), lambda: LoadedDataset(table))
    assert cache.invalidate_dataset("penguin", older_than=2) == 1
    assert sorted(cache.keys()) == [("other", 1), ("penguin", 2)]
