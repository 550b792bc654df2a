"""The long variant of the hostile suite (tests/e2e/test_hostile.py): floods an embedded mesh and reports
what each service's memory and another user's latency do under them.

1. Free-call flood: one user sends dummy runs on many dummy rows and cost estimates of deeply nested SQL
   from many threads for a while; another user runs COUNTs one after another. Reports the peak resident
   memory of every service (its process and all its children) and the other user's latency (p50, p95,
   max), beside the same user's latency with no flood, measured in the same run.
2. Fairness: one user queues 64 slow GROUP BY queries on a 200,000-row dataset; another user runs one
   COUNT at a time meanwhile. Reports how much the backlog delays that COUNT (p50, p95, max beside the
   COUNT alone) and how long the backlog took.

    .venv/bin/python bench/hostile_floods.py [--flood-seconds 30] [--backlog 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import yaml

from lomas.client import Client, LomasError
from lomas.client.admin import approx_dp, local_source
from lomas.common.v1 import dataset_pb2
from lomas_embedded import demo
from lomas_embedded.local import LocalMesh, local_mesh
from lomas_executor.demo import make_penguin_like, penguin_metadata_text

COUNT = "SELECT COUNT(*) AS n FROM df"
DUMMY = "SELECT species, AVG(body_mass_g) AS m FROM df GROUP BY species"
NESTED = "SELECT COUNT(*) AS n FROM df WHERE " + "(" * 5000 + "1 = 1" + ")" * 5000
SLOW = (
    "SELECT species, island, AVG(bill_length_mm) AS a, AVG(body_mass_g) AS b, "
    "AVG(flipper_length_mm) AS c FROM df GROUP BY species, island"
)


class MemorySampler:
    """Peak resident memory of every service of the mesh, its children included, sampled every 50 ms."""

    def __init__(self, running: LocalMesh) -> None:
        self._services = {s.name: s.process.pid for s in running.mesh.processes}
        self.peaks: dict[str, int] = dict.fromkeys(self._services, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self, pid: int) -> int:
        try:
            process = psutil.Process(pid)
            total = process.memory_info().rss
            for child in process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self._services.items():
                self.peaks[name] = max(self.peaks[name], self._rss(pid))
            self._stop.wait(0.05)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def researcher(running: LocalMesh, dataset: str = demo.DATASET) -> Client:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with running.admin() as admin:
        admin.add_user(name)
        admin.grant(name, dataset, approx_dp("1000000", "0.9"))
    return Client(running.target, token=running.token(name), dataset=dataset)


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return (
        f"n {len(ordered):4d}  p50 {statistics.median(ordered):7.1f} ms  p95 {p95:7.1f} ms  "
        f"max {ordered[-1]:7.1f} ms"
    )


def free_call_flood(running: LocalMesh, seconds: float, threads: int, dummy_rows: int) -> None:
    flooder, other = researcher(running), researcher(running)

    def count() -> None:
        other.smartnoise_sql.query(COUNT, epsilon="0.1", delta="0", fresh=True)

    quiet = [timed(count) for _ in range(30)]
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def flood(index: int) -> None:
        while time.monotonic() < stop:
            try:
                if index % 2:
                    flooder.smartnoise_sql.query(
                        DUMMY, epsilon="1", delta="0", dummy=True, nb_rows=dummy_rows
                    )
                else:
                    flooder.smartnoise_sql.cost(NESTED, epsilon="1", delta="0")
                outcome = "answered"
            except LomasError as error:
                outcome = f"{error.code}/{error.reason}"
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    loaded: list[float] = []
    with MemorySampler(running) as memory, ThreadPoolExecutor(threads) as pool:
        for i in range(threads):
            pool.submit(flood, i)
        while time.monotonic() < stop:
            loaded.append(timed(count))
    print(
        f"\n## Free-call flood: {threads} threads for {seconds:.0f} s ({dummy_rows:,} dummy rows)"
    )
    print(f"other user's COUNT, quiet:       {summary(quiet)}")
    print(f"other user's COUNT, under flood: {summary(loaded)}")
    print("flood outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print("peak resident memory (process and children):")
    for name, peak in memory.peaks.items():
        print(f"  {name:12s} {peak / 2**20:8.0f} MiB")
    print(f"flooder charged: {flooder.get_total_spent_budget()['total_spent_epsilon']}")


def fairness(running: LocalMesh, tmp: Path, backlog: int) -> None:
    name = "PENGUIN_200K"
    path = tmp / "penguin_200k.csv"
    make_penguin_like(200_000, seed=7).to_csv(path, index=False)
    metadata = yaml.safe_load(penguin_metadata_text())
    metadata["rows"] = 200_000
    with running.admin() as admin:
        admin.add_dataset(name, local_source(path), metadata, dataset_pb2.DATA_FORMAT_CSV)
    heavy, light = researcher(running, name), researcher(running, name)

    def count() -> None:
        light.smartnoise_sql.query(COUNT, epsilon="0.1", delta="0", fresh=True)

    def slow() -> None:
        heavy.smartnoise_sql.query(SLOW, epsilon="0.1", delta="0", fresh=True)

    for _ in range(4):  # load the table into both worker children
        slow()
    alone = [timed(count) for _ in range(20)]
    slow_alone = [timed(slow) for _ in range(10)]
    delayed: list[float] = []
    start = time.monotonic()
    with ThreadPoolExecutor(backlog) as pool:
        futures = [pool.submit(slow) for _ in range(backlog)]
        time.sleep(0.5)
        while not all(f.done() for f in futures):
            delayed.append(timed(count))
        for future in futures:
            future.result()
    backlog_seconds = time.monotonic() - start
    p50 = statistics.median(alone)
    print(f"\n## Fairness: {backlog} slow queries of one user, another user's COUNT meanwhile")
    print(f"slow query alone:               {summary(slow_alone)}")
    print(f"COUNT alone:                    {summary(alone)}")
    print(f"COUNT behind the backlog:       {summary(delayed)}")
    print(f"delay over COUNT alone (p50):   max {max(delayed) - p50:7.1f} ms")
    print(f"the backlog took {backlog_seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood-seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--dummy-rows", type=int, default=500_000)
    parser.add_argument("--backlog", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, local_mesh(Path(tmp)) as running:
        free_call_flood(running, args.flood_seconds, args.threads, args.dummy_rows)
        fairness(running, Path(tmp), args.backlog)


if __name__ == "__main__":
    main()
