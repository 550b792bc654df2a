"""Query latency and throughput through the platform, beside stock smartnoise-sql and OpenDP measured
in the same run, checked against the issue's targets.

Floors (bench/throughput_floor.py, in clean processes, the libraries as shipped, on the same 344-row
PENGUIN data, epsilon 1.0 and delta 1e-5 as the platform runs):
  * smartnoise-sql, one process: distinct COUNT texts one after another (p50/p95/p99);
  * smartnoise-sql, 8 processes at once (spawn) for `--seconds`: total queries per second;
  * OpenDP: the measurement in the Lomas CSV-text form and a Polars plan, built and run per query.

Through the platform (an embedded mesh, the Python client; distinct texts so nothing is a replay):
  * one client: distinct COUNTs (`--queries`), the same COUNT with fresh=True (the rewrite cached),
    free replays, repeated cost estimates, OpenDP measurements and Polars plans (distinct and
    repeated with fresh=True);
  * 8 clients (threads, one Client each) of one user, then of 8 users, distinct COUNTs for
    `--seconds`: queries per second, latency, refusals by reason, UNAVAILABLE apart, and the CPU
    seconds each mesh process tree used meanwhile.

    .venv/bin/python bench/query_throughput.py [--queries 2000] [--seconds 20] [--runs 200] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from throughput_floor import count_sql, mean_bill, run_floor, species_plan

from lomas.client import Client, LomasError
from lomas.client.admin import approx_dp
from lomas_embedded import demo
from lomas_embedded.local import LocalMesh, local_mesh
from lomas_executor.demo import penguin_metadata_text

EPSILON, DELTA = 1.0, 1e-5
# A COUNT is charged delta 1e-5 too (the query's delta), and deltas add up: 0.0002 would allow only
# 20 queries, so each user gets the delta the other benches grant.
GRANT_EPSILON, GRANT_DELTA = "1000000", "0.9"
CLIENTS = 8
# Per-user limits, generous so that 8 clients of one user measure the platform, not its guards.
LIMITS = {
    "LOMAS_RATE_LIMIT_PER_SECOND": "100000",
    "LOMAS_MAX_CONCURRENT_QUERIES_PER_USER": "1000",
    "LOMAS_MAX_CONCURRENT_FREE_CALLS_PER_USER": "1000",
}
WARM_UP_RUNS = 5
SLOW_MS = 1000.0


# -- numbers -----------------------------------------------------------------------------------------


def percentile(times: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 2,000 times is the 1,980th smallest)."""
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass(frozen=True)
class Latency:
    name: str
    times: list[float]  # milliseconds

    @property
    def p50(self) -> float:
        return statistics.median(self.times)

    @property
    def p95(self) -> float:
        return percentile(self.times, 0.95)

    @property
    def p99(self) -> float:
        return percentile(self.times, 0.99)

    @property
    def slow(self) -> int:
        return sum(1 for t in self.times if t > SLOW_MS)

    def row(self) -> str:
        return (
            f"{self.name:<56} {len(self.times):>5} {self.p50:8.1f} {self.p95:8.1f} "
            f"{self.p99:8.1f} {max(self.times):8.1f} {self.slow:>5}"
        )


@dataclass
class Load:
    """What several clients (or processes) at once achieved."""

    name: str
    times: list[float]  # answered queries, milliseconds
    seconds: float
    refused: dict[str, int] = field(default_factory=dict)  # "CODE/REASON" -> count
    unavailable: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # process tree -> CPU seconds

    @property
    def per_second(self) -> float:
        return len(self.times) / self.seconds

    def row(self) -> str:
        latency = Latency("", self.times)
        refused = sum(self.refused.values())
        return (
            f"{self.name:<34} {len(self.times):>6} {self.seconds:6.1f} {self.per_second:7.1f} "
            f"{latency.p50:8.1f} {latency.p95:8.1f} {latency.p99:8.1f} {max(self.times):8.1f} "
            f"{refused:>7} {self.unavailable:>5}"
        )


def timed(call: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# -- CPU per mesh process ------------------------------------------------------------------------------


def _process_cpu(process: psutil.Process) -> float:
    """CPU seconds of the process and of its children already reaped (a Celery child replaced after
    its task quota moves into its parent's `children_*` times, so nothing is lost)."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _label(root: psutil.Process, services: dict[int, str]) -> str:
    if root.pid in services:
        return services[root.pid]
    command = root.cmdline()
    return Path(command[0]).name if command else root.name()


def mesh_cpu(running: LocalMesh) -> dict[str, float]:
    """CPU seconds so far of each process tree under this bench (the mesh's services, its Redis),
    labelled by service name (or command), plus the bench process itself (its client threads)."""
    services = {}
    for service in running.mesh.processes:
        module = service.argv[-1] if service.argv else ""
        services[service.process.pid] = f"{service.name} ({module})"
    me = psutil.Process()
    out: dict[str, float] = {}
    for root in me.children():
        try:
            label = _label(root, services)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        total = 0.0
        for process in tree:
            try:
                total += _process_cpu(process)
            except psutil.Error:
                pass  # exited meanwhile: its time is in its parent's children_* from now on
        out[label] = out.get(label, 0.0) + total
    own = me.cpu_times()
    out["bench process (client threads)"] = own.user + own.system
    return out


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per process tree, the CPU seconds between two `mesh_cpu` snapshots."""
    return {label: value - before.get(label, 0.0) for label, value in after.items()}


# -- through the platform ------------------------------------------------------------------------------


def researcher(running: LocalMesh, name: str) -> None:
    with running.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp(GRANT_EPSILON, GRANT_DELTA))


def count_query(client: Client, label: str, fresh: bool = False) -> Any:
    return client.smartnoise_sql.query(count_sql(label), epsilon=EPSILON, delta=DELTA, fresh=fresh)


def one_client(running: LocalMesh, queries: int, runs: int) -> list[Latency]:
    """Every single-client phase, one after another, each with its own warm-up."""
    researcher(running, "bench-single")
    client = running.client("bench-single")
    columns = list(yaml.safe_load(penguin_metadata_text())["columns"])
    out = []

    for index in range(WARM_UP_RUNS):
        count_query(client, f"warm_{index}")
    counter = iter(range(queries))
    out.append(
        Latency(
            "COUNT distinct texts",
            timed(lambda: count_query(client, f"seq_{next(counter)}"), queries),
        )
    )

    count_query(client, "fresh", fresh=True)
    fresh = timed(lambda: count_query(client, "fresh", fresh=True), runs)
    out.append(Latency("COUNT repeated text, fresh=True", fresh))

    count_query(client, "replay")  # charged once; every later call is a free replay
    replays = 0

    def replay() -> None:
        nonlocal replays
        replays += bool(count_query(client, "replay").attrs["replay"])

    out.append(Latency("COUNT free replay", timed(replay, runs)))
    if replays != runs:
        print(f"WARNING: only {replays} of {runs} free replays were replays")

    def estimate() -> None:
        client.smartnoise_sql.cost(count_sql("estimate"), epsilon=EPSILON, delta=DELTA)

    estimate()
    out.append(Latency("COUNT cost estimate, repeated text", timed(estimate, runs)))

    out += opendp_phases(
        client, "OpenDP measurement (CSV text)", lambda variant: mean_bill(columns, variant), runs
    )
    out += opendp_phases(client, "OpenDP Polars plan", species_plan, runs)
    client.close()
    return out


def opendp_phases(
    client: Client, name: str, build: Callable[[int], Any], runs: int
) -> list[Latency]:
    """A pipeline through the platform: distinct variants (each a new query), then one variant
    repeated with fresh=True."""
    for variant in range(WARM_UP_RUNS):
        client.opendp.query(build(-1 - variant))
    variants = iter([build(variant) for variant in range(runs)])  # built before the clock starts
    distinct = timed(lambda: client.opendp.query(next(variants)), runs)
    same = build(0)
    repeated = timed(lambda: client.opendp.query(same, fresh=True), runs)
    return [Latency(f"{name}, distinct", distinct), Latency(f"{name}, repeated fresh", repeated)]


def concurrent(
    running: LocalMesh, name: str, users: list[str], prefix: str, seconds: float
) -> Load:
    """One thread per user entry (each its own Client), distinct COUNT texts for `seconds`."""
    clients = [running.client(user) for user in users]
    for index, client in enumerate(clients):
        count_query(client, f"{prefix}_warm_{index}")
    lock = threading.Lock()
    load = Load(name, [], seconds)
    go = threading.Event()
    deadline = 0.0

    def run(index: int, client: Client) -> None:
        go.wait()
        query = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                count_query(client, f"{prefix}_{index}_{query}")
            except LomasError as error:
                with lock:
                    if error.code == "UNAVAILABLE":
                        load.unavailable += 1
                    else:
                        key = f"{error.code}/{error.reason}"
                        load.refused[key] = load.refused.get(key, 0) + 1
            else:
                with lock:
                    load.times.append((time.perf_counter() - started) * 1000)
            query += 1

    before = mesh_cpu(running)
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(run, index, client) for index, client in enumerate(clients)]
        started = time.monotonic()
        deadline = started + seconds
        go.set()
        for future in futures:
            future.result()
        load.seconds = time.monotonic() - started  # until the last query in flight came back
    load.cpu = cpu_used(before, mesh_cpu(running))
    for client in clients:
        client.close()
    return load


def through_platform(
    tmp: Path, queries: int, runs: int, seconds: float
) -> tuple[list[Latency], list[Load]]:
    with local_mesh(tmp, extra_env=LIMITS) as running:
        researcher(running, "bench-check")
        with running.client("bench-check") as check:
            cost = check.smartnoise_sql.cost(count_sql("check"), epsilon=EPSILON, delta=DELTA)
        setup = (
            f"mesh: embedded (private Redis, SQLite stores), {running.mesh.config.worker_count} "
            f"worker(s) x concurrency {running.mesh.config.worker_concurrency}; "
            f"COUNT text accepted, costs {', '.join(f'{k} {v}' for k, v in cost.items())}"
        )
        print(setup, flush=True)
        print(f"load average before single-client phases: {load_average()}", flush=True)
        latencies = one_client(running, queries, runs)
        loads = []
        one_user = ["bench-one-user"]
        researcher(running, one_user[0])
        many_users = [f"bench-user-{index}" for index in range(CLIENTS)]
        for user in many_users:
            researcher(running, user)
        for name, users, prefix in (
            (f"{CLIENTS} clients, 1 user", one_user * CLIENTS, "one"),
            (f"{CLIENTS} clients, {CLIENTS} users", many_users, "many"),
        ):
            print(f"load average before '{name}': {load_average()}", flush=True)
            loads.append(concurrent(running, name, users, prefix, seconds))
        return latencies, loads


# -- report --------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_targets(
    floor_sequential: Latency,
    floor_parallel: Load,
    latencies: dict[str, Latency],
    loads: list[Load],
) -> None:
    rows: list[tuple[str, str, bool]] = []
    count = latencies["COUNT distinct texts"]
    limit = floor_sequential.p50 + 5
    rows.append(
        (
            "COUNT 1 client distinct: p50 <= floor p50 + 5 ms",
            f"{count.p50:.1f} <= {limit:.1f} ms",
            count.p50 <= limit,
        )
    )
    rows.append(
        (
            "COUNT 1 client distinct: p99 <= 2 x p50",
            f"{count.p99:.1f} <= {2 * count.p50:.1f} ms",
            count.p99 <= 2 * count.p50,
        )
    )
    rows.append(
        (
            f"COUNT 1 client distinct: no query over 1 s in {len(count.times):,}",
            f"{count.slow} over 1 s (max {max(count.times):.0f} ms)",
            count.slow == 0,
        )
    )
    for name, target in (
        ("COUNT repeated text, fresh=True", 12.0),
        ("COUNT free replay", 3.0),
        ("COUNT cost estimate, repeated text", 2.0),
        ("OpenDP measurement (CSV text), distinct", 40.0),
        ("OpenDP measurement (CSV text), repeated fresh", 40.0),
        ("OpenDP Polars plan, distinct", 40.0),
        ("OpenDP Polars plan, repeated fresh", 40.0),
    ):
        p50 = latencies[name].p50
        rows.append((f"{name}: p50 <= {target:g} ms", f"{p50:.1f} ms", p50 <= target))
    share = 0.75 * floor_parallel.per_second
    for load in loads:
        rows.append(
            (f"{load.name}: >= 60 q/s", f"{load.per_second:.1f} q/s", load.per_second >= 60)
        )
        rows.append(
            (
                f"{load.name}: >= 75% of the 8-process floor",
                f"{load.per_second:.1f} >= {share:.1f} q/s "
                f"({100 * load.per_second / floor_parallel.per_second:.0f}%)",
                load.per_second >= share,
            )
        )
        p99 = Latency("", load.times).p99
        rows.append((f"{load.name}: p99 <= 1 s", f"{p99:.0f} ms", p99 <= SLOW_MS))
        refused = sum(load.refused.values())
        rows.append(
            (
                f"{load.name}: none refused",
                f"{refused} refused, {load.unavailable} UNAVAILABLE",
                refused == 0 and load.unavailable == 0,
            )
        )
    print("\n## Targets")
    print(f"{'target':<62} {'measured':<34} verdict")
    for aim, measured, ok in rows:
        print(f"{aim:<62} {measured:<34} {verdict(ok)}")


def report(
    floors: list[Latency],
    floor_parallel: Load,
    latencies: list[Latency],
    loads: list[Load],
) -> None:
    print("\n## Latency, one at a time (ms)")
    print(f"{'':<56} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'>1s':>5}")
    for latency in floors:
        print(latency.row())
    for latency in latencies:
        print(Latency(f"platform: {latency.name}", latency.times).row())

    print(f"\n## Throughput, {CLIENTS} at once (answered queries; latency in ms)")
    print(
        f"{'':<34} {'n':>6} {'s':>6} {'q/s':>7} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} "
        f"{'refused':>7} {'unav.':>5}"
    )
    print(floor_parallel.row())
    for load in loads:
        print(
            Load(
                f"platform: {load.name}", load.times, load.seconds, load.refused, load.unavailable
            ).row()
        )
    for load in loads:
        if load.refused:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(load.refused.items()))
            print(f"refused in '{load.name}': {reasons}")

    print("\n## CPU seconds per process tree (process and its children) during each phase")
    labels = list(dict.fromkeys(label for load in loads for label in load.cpu))
    print(f"{'process tree':<62}" + "".join(f" {load.name:>20}" for load in loads))
    for label in labels:
        print(f"{label:<62}" + "".join(f" {load.cpu.get(label, 0.0):>20.1f}" for load in loads))
    print(f"{'wall seconds':<62}" + "".join(f" {load.seconds:>20.1f}" for load in loads))

    print_targets(floors[0], floor_parallel, {x.name: x for x in latencies}, loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2000, help="distinct COUNTs, one client")
    parser.add_argument("--seconds", type=float, default=20.0, help="each phase of 8 at once")
    parser.add_argument("--runs", type=int, default=200, help="queries of the other phases")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 queries, 5 s")
    args = parser.parse_args()
    if args.quick:
        args.queries, args.seconds, args.runs = 100, 5.0, 50
    print(
        f"# query throughput: {os.cpu_count()} cores, load average {load_average()}; "
        f"queries epsilon {EPSILON} delta {DELTA}; grants epsilon {GRANT_EPSILON} "
        f"delta {GRANT_DELTA}; {args.queries} distinct COUNTs, {args.runs} runs per other phase, "
        f"{args.seconds:g} s per phase of {CLIENTS} at once",
        flush=True,
    )
    print("per-user limits set: " + ", ".join(f"{k}={v}" for k, v in LIMITS.items()), flush=True)
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        csv = demo.write_penguin_dataset(tmp / "datasets")  # the file the mesh's dataset reads
        base: dict[str, Any] = {
            "csv": str(csv),
            "metadata": yaml.safe_load(penguin_metadata_text()),
            "epsilon": EPSILON,
            "delta": DELTA,
        }
        sequential = run_floor("sql-sequential", {**base, "queries": args.queries})
        parallel = run_floor(
            "sql-parallel", {**base, "processes": CLIENTS, "seconds": args.seconds}
        )
        opendp = run_floor("opendp", {**base, "runs": args.runs})
        floors = [
            Latency("floor: smartnoise-sql COUNT distinct, 1 proc", sequential),
            Latency("floor: OpenDP measurement, build + run", opendp["measurement"]),
            Latency("floor: OpenDP measurement, + to JSON and back", opendp["measurement json"]),
            Latency("floor: OpenDP Polars plan, build + run", opendp["polars"]),
            Latency("floor: OpenDP Polars plan, + to JSON and back", opendp["polars json"]),
        ]
        floor_parallel = Load(
            f"floor: smartnoise-sql, {CLIENTS} procs", parallel["times"], parallel["seconds"]
        )
        print("floors measured", flush=True)
        latencies, loads = through_platform(tmp, args.queries, args.runs, args.seconds)
    report(floors, floor_parallel, latencies, loads)
    print(f"\nload average at the end: {load_average()} (a shared machine: other work ran too)")


if __name__ == "__main__":
    main()
