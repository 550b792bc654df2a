"""What a short step costs when its process has just been idle: the machine's share of a fresh query.

A repeated query with fresh=True (bench/query_throughput.py) is a relay through about ten
processes (client, gateway, Redis, budget, Celery's consumer and its child, admin store), and each
of them has been idle for most of the ~12 ms since its last part in the previous query. On a
virtual machine that shares its cores, a step that follows such a pause runs slower than the same
step run back to back: its caches and branch predictors were taken by other work meanwhile. This
bench measures that penalty on the steps themselves, in one process, with nothing else of the
platform running:

* the worker's run of a cached COUNT on the 344-row demo data (the smartnoise-sql release of an
  already-rewritten query, encoded as Arrow IPC: what the worker child does between the charge and
  the archive write);
* a stock OpenDP measurement, built once, invoked (clamp, sum, Laplace on 344 floats);
* plain Python: a JSON round trip of a 200-key document (the kind of work every service does).

Each step is timed back to back, then after sleeping 2, 12 and 50 ms, then after 12 ms of spinning
(the CPU kept busy: a penalty that remains is the cache's, not the CPU's sleep).

    .venv/bin/python bench/cold_steps.py [--runs 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from decimal import Decimal

import opendp.prelude as dp
from throughput_floor import count_sql

from lomas_executor import smartnoise_sql
from lomas_executor.arrow_ipc import frame_to_ipc
from lomas_executor.demo import PENGUIN_ROWS, make_penguin_like, penguin_metadata

dp.enable_features("contrib")

WARM_UP_RUNS = 200
PAUSES_MS = (2.0, 12.0, 50.0)
SPIN_MS = 12.0


def worker_run() -> Callable[[], object]:
    metadata = penguin_metadata()
    reader = smartnoise_sql.prepare_reader(make_penguin_like(rows=PENGUIN_ROWS, seed=0), metadata)
    query = smartnoise_sql.SmartnoiseSqlQuery(
        count_sql("cold"), Decimal("1.0"), Decimal("0.00001"), {}, True
    )
    smartnoise_sql.estimate_cost(query, metadata, dry_run=False)  # the rewrite, cached

    def run() -> object:
        frame = smartnoise_sql.execute(query, reader, metadata, validated=True)
        return frame_to_ipc(frame)

    return run


def opendp_invoke() -> Callable[[], object]:
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    measurement = (
        (domain, dp.symmetric_distance())
        >> dp.t.then_clamp((0.0, 50.0))
        >> dp.t.then_sum()
        >> dp.m.then_laplace(50.0)
    )
    data = [float(index % 50) for index in range(PENGUIN_ROWS)]
    return lambda: measurement(data)


def json_round_trip() -> Callable[[], object]:
    document = {f"key_{index}": list(range(20)) for index in range(200)}
    return lambda: json.loads(json.dumps(document))


def asleep(milliseconds: float) -> Callable[[], None]:
    return lambda: time.sleep(milliseconds / 1000)


def spinning(milliseconds: float) -> Callable[[], None]:
    def spin() -> None:
        end = time.perf_counter() + milliseconds / 1000
        while time.perf_counter() < end:
            pass

    return spin


def p50_after(step: Callable[[], object], runs: int, pause: Callable[[], None] | None) -> float:
    times = []
    for _ in range(runs):
        if pause is not None:
            pause()
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="timed runs per step and pause")
    args = parser.parse_args()
    steps = {
        "worker: cached COUNT run + Arrow IPC": worker_run(),
        "OpenDP: built measurement invoked": opendp_invoke(),
        "Python: JSON round trip, 200 keys": json_round_trip(),
    }
    pauses: dict[str, Callable[[], None] | None] = {"back to back": None}
    for milliseconds in PAUSES_MS:
        pauses[f"after {milliseconds:g} ms asleep"] = asleep(milliseconds)
    pauses[f"after {SPIN_MS:g} ms spinning"] = spinning(SPIN_MS)

    print(f"# p50 of {args.runs} runs per cell, milliseconds")
    print(f"{'step':<40}" + "".join(f" {name:>22}" for name in pauses))
    for name, step in steps.items():
        for _ in range(WARM_UP_RUNS):
            step()
        cells = [p50_after(step, args.runs, pause) for pause in pauses.values()]
        print(f"{name:<40}" + "".join(f" {cell:>22.3f}" for cell in cells))


if __name__ == "__main__":
    main()
