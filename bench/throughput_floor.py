"""The floors of bench/query_throughput.py: the DP libraries as shipped, in a clean process.

* smartnoise-sql, its reader built once over the table: distinct COUNT texts one after another, or
  from several processes at once (multiprocessing, spawn) for a while;
* OpenDP: the measurement in the Lomas CSV-text form and a Polars plan, each built and run per query,
  as a researcher does on their own machine.

The queries and pipelines are defined here once, so the bench sends the platform the same ones. The
bench runs the floors as `python bench/throughput_floor.py MODE ARGS_JSON` (nothing of the platform
imported, so the libraries are stock); the process prints its result as JSON.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import subprocess
import sys
import time
import warnings
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import opendp.prelude as dp
import pandas as pd
import polars as pl
from opendp.extras.polars import Margin

from lomas_testing import opendp_pipelines as pipelines

dp.enable_features("contrib")

WARM_UP_RUNS = 3
SPECIES = pipelines.SPECIES


def count_sql(label: str) -> str:
    """A COUNT whose text is distinct per label (the alias), so the platform never replays it."""
    return f"SELECT COUNT(*) AS n_{label} FROM df"


def mean_bill(columns: list[str], variant: int = 0) -> dp.Measurement:
    """The CSV-text measurement; each `variant` imputes a slightly different constant, so its JSON
    differs and its cost does not."""
    return pipelines.mean_bill(columns, impute=40.0 + variant / 1000)


def species_plan(variant: int = 0) -> pl.LazyFrame:
    """The Polars plan; each `variant` fills nulls with a slightly different constant."""
    return pipelines.species_plan(fill=40.0 + variant / 1000)


def species_domain(rows: int) -> dp.Domain:
    """The LazyFrame domain the platform gives `species_plan` (the two columns it reads, a margin
    over all rows and one per species)."""
    domain = dp.lazyframe_domain(
        [
            dp.series_domain("species", dp.atom_domain(T=dp.String)),
            dp.series_domain("bill_length_mm", dp.atom_domain(T=dp.f64, nan=False)),
        ]
    )
    domain = dp.with_margin(domain, Margin(by=[], max_length=rows))
    return dp.with_margin(
        domain, Margin(by=[pl.col("species")], max_length=rows, max_groups=len(SPECIES))
    )


def run_floor(mode: str, arguments: dict[str, Any]) -> Any:
    """Run one floor in a clean process and return what it printed (parsed JSON)."""
    result = subprocess.run(
        [sys.executable, __file__, mode, json.dumps(arguments)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout)


# -- in the clean process --------------------------------------------------------------------------


def _reader(arguments: dict[str, Any]) -> Any:
    import snsql
    from snsql import Privacy

    metadata = dict(arguments["metadata"])
    columns = metadata.pop("columns")
    return snsql.from_df(
        pd.read_csv(arguments["csv"]),
        privacy=Privacy(epsilon=float(arguments["epsilon"]), delta=float(arguments["delta"])),
        metadata={"": {"": {"df": {**metadata, **columns}}}},
    )


def _timed_counts(reader: Any, prefix: str, count: int) -> list[float]:
    times = []
    for index in range(count):
        sql = count_sql(f"{prefix}_{index}")
        started = time.perf_counter()
        reader.execute_df(sql)
        times.append((time.perf_counter() - started) * 1000)
    return times


def sql_sequential(arguments: dict[str, Any]) -> list[float]:
    """Distinct COUNT texts one after another; each time in milliseconds."""
    reader = _reader(arguments)
    _timed_counts(reader, "warm", WARM_UP_RUNS)
    return _timed_counts(reader, "seq", int(arguments["queries"]))


def _sql_process(
    arguments: dict[str, Any],
    index: int,
    ready: Queue[int],
    go: Event,
    results: Queue[list[float]],
) -> None:
    reader = _reader(arguments)
    _timed_counts(reader, f"warm_{index}", WARM_UP_RUNS)
    ready.put(index)
    go.wait()
    deadline = time.monotonic() + float(arguments["seconds"])
    times = []
    query = 0
    while time.monotonic() < deadline:
        times.extend(_timed_counts(reader, f"p{index}_{query}", 1))
        query += 1
    results.put(times)


def sql_parallel(arguments: dict[str, Any]) -> dict[str, Any]:
    """Distinct COUNT texts from `processes` processes at once for `seconds`: every query's time
    and the wall time from the start signal until the last process finished."""
    context = multiprocessing.get_context("spawn")
    processes = int(arguments["processes"])
    ready: Queue[int] = context.Queue()
    results: Queue[list[float]] = context.Queue()
    go = context.Event()
    workers = [
        context.Process(target=_sql_process, args=(arguments, index, ready, go, results))
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get()  # every reader built and warm before the clock starts
    go.set()
    started = time.monotonic()
    times: list[float] = []
    for _ in workers:
        times.extend(results.get())
    elapsed = time.monotonic() - started
    for worker in workers:
        worker.join()
    return {"times": times, "seconds": elapsed}


def opendp_times(arguments: dict[str, Any]) -> dict[str, list[float]]:
    """Each pipeline built and run per query, over the same data (milliseconds); and the same
    through the wire form (serialized, deserialized, then run), which the platform cannot avoid."""
    columns = list(arguments["metadata"]["columns"])
    runs = int(arguments["runs"])
    frame = pd.read_csv(arguments["csv"])
    csv_text = frame[columns].to_csv(header=False, index=False)
    polars_frame = pl.read_csv(arguments["csv"]).select("species", "bill_length_mm")
    domain = species_domain(int(arguments["metadata"]["rows"]))

    def measurement(variant: int) -> object:
        return mean_bill(columns, variant)(csv_text)

    def measurement_json(variant: int) -> object:
        return dp.deserialize(dp.serialize(mean_bill(columns, variant)))(csv_text)

    def run_plan(plan: pl.LazyFrame) -> object:
        built = dp.m.make_private_lazyframe(
            domain, dp.symmetric_distance(), dp.max_divergence(), plan
        )
        return built(polars_frame.lazy()).collect()

    def polars_plan(variant: int) -> object:
        return run_plan(species_plan(variant))

    def polars_plan_json(variant: int) -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Polars flags its JSON plan format as unstable
            text = species_plan(variant).serialize(format="json")
            return run_plan(pl.LazyFrame.deserialize(io.StringIO(text), format="json"))

    out: dict[str, list[float]] = {}
    for name, run in (
        ("measurement", measurement),
        ("measurement json", measurement_json),
        ("polars", polars_plan),
        ("polars json", polars_plan_json),
    ):
        for variant in range(WARM_UP_RUNS):
            run(-1 - variant)
        times = []
        for variant in range(runs):
            started = time.perf_counter()
            run(variant)
            times.append((time.perf_counter() - started) * 1000)
        out[name] = times
    return out


def main() -> None:
    mode, arguments_json = sys.argv[1:3]
    arguments = json.loads(arguments_json)
    modes = {"sql-sequential": sql_sequential, "sql-parallel": sql_parallel, "opendp": opendp_times}
    print(json.dumps(modes[mode](arguments)))


if __name__ == "__main__":
    main()
