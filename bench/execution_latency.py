"""Execution latency on large datasets: cold and warm cache through the platform, beside the engine.

For each size (default 1,000,000 and 10,000,000 rows) it writes a generated Parquet dataset into a
temporary directory, starts a mesh (the machine's Redis or a private one, SQLite stores, one Celery
worker with one process, so its cache serves every query) and reports, per query (a COUNT and a GROUP
BY AVG with SmartNoise-SQL, and the same two as an OpenDP Polars query):

* cold: the first query on the dataset (the worker loads the Parquet file and prepares the engine);
* warm: later queries (`fresh=True`, so each is a real run and a real charge, not a free replay);
* in-process: the same query through `QueryEngine.run` with the dataset loaded and prepared once
  (the platform's own engine, with its noise-scale memo: a stricter floor than the library), timed
  before and after the platform runs;
* library: the same query through the DP library as shipped, with the data loaded and the engine
  prepared once and reused, which is what a researcher gets locally: stock smartnoise-sql with its
  reader built once (`bench/stock_smartnoise.py`, in a clean process), and OpenDP's
  `make_private_lazyframe` over the whole table, loaded once as a Polars frame (timed before and
  after the platform runs);
* warm/library: the issue's aim, within 1.5x;
* the cost estimate through the platform (no data access: it should not depend on the size);
* the peak resident memory of the worker's processes (their high-water marks).

    .venv/bin/python bench/execution_latency.py [--sizes 1000000,10000000] [--runs 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import opendp.prelude as dp
import polars as pl
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from opendp.extras.polars import DPExpr, dp_len
from stock_smartnoise import stock_times

from lomas.client import Client
from lomas.client.admin import AdminClient, approx_dp, local_source
from lomas.common.v1 import dataset_pb2
from lomas_embedded import demo
from lomas_embedded.devkeys import DevIssuer
from lomas_embedded.mesh import Mesh, MeshConfig
from lomas_embedded.redis_server import PrivateRedis
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import DatasetRef, QueryEngine
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import OpenDpPolarsQuery
from lomas_executor.opendp_polars import lazyframe_domain
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.sources import DataFormat, DataSource

EPSILON, DELTA = 1.0, 1e-5
SQL = {
    "SQL COUNT": "SELECT COUNT(*) AS n FROM df",
    "SQL GROUP BY AVG": "SELECT g, AVG(x) AS avg_x FROM df GROUP BY g",
}
CATEGORIES = ["alpha", "beta", "gamma"]
AIM_RATIO = 1.5  # warm through the platform, over the library in-process


@dataclass(frozen=True)
class QueryRow:
    """One query at one size: the platform's cold/warm/cost times and the two floors (ms)."""

    rows: int
    name: str
    platform: dict[str, float]
    floor: float
    library: float


@dataclass(frozen=True)
class MemoryRow:
    """The worker's peak memory at one size (bytes)."""

    rows: int
    peak_child: int
    peak_tree: int


def metadata(rows: int) -> dict[str, Any]:
    return {
        "max_ids": 1,
        "rows": rows,
        "row_privacy": True,
        "columns": {
            "g": {"type": "string", "cardinality": 3, "categories": CATEGORIES},
            "x": {"type": "float", "precision": 64, "lower": 0.0, "upper": 100.0},
            "k": {"type": "int", "lower": 0, "upper": 1000},
        },
    }


def polars_plans() -> dict[str, pl.LazyFrame]:
    lf = pl.LazyFrame(schema={"g": pl.String, "x": pl.Float64})
    return {
        "OpenDP COUNT": lf.select(dp_len(scale=1.0)),
        # Every declared key released: the public key set joined in (OpenDP's `with_keys`).
        "OpenDP GROUP BY AVG": pl.LazyFrame({"g": CATEGORIES}).join(
            # `DPExpr(e).mean` is `e.dp.mean`: OpenDP registers the `dp` namespace at run time.
            lf.group_by("g").agg(
                DPExpr(pl.col("x").fill_null(50.0)).mean((0.0, 100.0), scale=100.0)
            ),
            on="g",
            how="left",
            nulls_equal=True,
        ),
    }


def write_dataset(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    chunk = 1_000_000
    writer: pq.ParquetWriter | None = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        table = pa.table(
            {
                "g": pa.array(np.array(CATEGORIES)[rng.integers(0, 3, n)]),
                "x": pa.array(rng.uniform(0, 100, n)),
                "k": pa.array(rng.integers(0, 1001, n)),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return path


class PeakMemory:
    """The peak resident memory of a process tree (the worker): each process's own high-water mark
    (VmHWM), read twice a second. Reading marks rather than sampling RSS often keeps the sampler
    from taking CPU from the queries it measures (2 cores)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self._marks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def peak_child(self) -> int:
        """The busiest child's peak."""
        return max((v for k, v in self._marks.items() if k != self.process.pid), default=0)

    @property
    def peak_tree(self) -> int:
        """The sum of every process's peak (an upper bound of the tree's peak)."""
        return sum(self._marks.values())

    def _run(self) -> None:
        while True:
            self._read()
            if self._stop.wait(0.5):
                return

    def _read(self) -> None:
        try:
            processes = [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue  # it ended
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    mark = int(line.split()[1]) * 1024
                    self._marks[process.pid] = max(self._marks.get(process.pid, 0), mark)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


def timed(call: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def p50(times: list[float]) -> float:
    return statistics.median(times)


def platform_run(
    tmp: Path, redis_url: str, path: Path, rows: int, runs: int
) -> tuple[dict[str, dict[str, float]], PeakMemory]:
    issuer = DevIssuer.load_or_create(tmp / "issuer")
    mesh = Mesh(
        MeshConfig(
            data_dir=tmp,
            redis_url=redis_url,
            admin_database_url=f"sqlite:///{tmp / 'admin.db'}",
            budget_database_url=f"sqlite:///{tmp / 'budget.db'}",
            jwks=str(issuer.jwks_path),
            issuer=issuer.issuer,
            audience=issuer.audience,
            bootstrap_admin=demo.ADMIN,
            worker_concurrency=1,
            extra_env={"LOMAS_CACHE_BYTES": str(16 * 1024**3)},
        )
    )
    results: dict[str, dict[str, float]] = {}
    try:
        mesh.start()
        memory = PeakMemory(mesh.service("worker-0").process.pid)
        plans = polars_plans()
        names = [*SQL, *plans]
        with AdminClient(mesh.gateway_target, token=issuer.token(demo.ADMIN)) as admin:
            admin.add_user("bench")
            # One dataset name per query over the same file: each name's first query is cold.
            for index, _ in enumerate(names):
                name = f"DATA_{index}"
                admin.add_dataset(
                    name, local_source(path), metadata(rows), dataset_pb2.DATA_FORMAT_PARQUET
                )
                admin.grant("bench", name, approx_dp("1000000", "0.9"))
        for index, name in enumerate(names):
            client = Client(
                mesh.gateway_target, token=issuer.token("bench"), dataset=f"DATA_{index}"
            )
            run: Callable[[], object]
            cost: Callable[[], object]
            if name in SQL:
                run = partial(client.smartnoise_sql.query, SQL[name], EPSILON, DELTA, fresh=True)
                cost = partial(client.smartnoise_sql.cost, SQL[name], EPSILON, DELTA)
            else:
                run = partial(client.opendp.query, plans[name], fresh=True)
                cost = partial(client.opendp.cost, plans[name])

            cold = timed(run, 1)[0]
            warm = timed(run, runs)
            estimate = timed(cost, runs)
            results[name] = {"cold": cold, "warm": p50(warm), "cost": p50(estimate)}
            client.close()
        memory.stop()
        return results, memory
    finally:
        mesh.stop()


def in_process(path: Path, rows: int, runs: int) -> dict[str, list[float]]:
    """The engine alone: dataset loaded and prepared once, then each query timed."""
    md = DatasetMetadata.from_dict(metadata(rows))
    dataset = DatasetRef("BENCH", 1, DataSource.local(path), DataFormat.PARQUET, md)
    engine = QueryEngine(DatasetCache(max_bytes=16 * 1024**3))
    queries: dict[str, Any] = {
        name: SmartnoiseSqlQuery(sql, epsilon=_dec(EPSILON), delta=_dec(DELTA))
        for name, sql in SQL.items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plan in polars_plans().items():
            queries[name] = OpenDpPolarsQuery(plan.serialize(format="json"))
    out = {}
    for name, query in queries.items():
        engine.run(query, dataset)  # load and prepare once
        out[name] = timed(partial(engine.run, query, dataset), runs)
    return out


def stock_opendp(path: Path, rows: int, runs: int) -> dict[str, list[float]]:
    """The OpenDP queries through OpenDP as shipped: the whole table loaded once as a Polars frame,
    and for each run a measurement over every column of the metadata's domain, as a researcher
    would make it."""
    md = DatasetMetadata.from_dict(metadata(rows))
    frame = pl.read_parquet(path)
    out = {}
    for name, plan in polars_plans().items():
        domain = lazyframe_domain(md, [("g",)] if "GROUP BY" in name else [])

        def run(plan: pl.LazyFrame = plan, domain: Any = domain) -> object:
            measurement = dp.m.make_private_lazyframe(
                domain, dp.symmetric_distance(), dp.max_divergence(), plan
            )
            return measurement(frame.lazy()).collect()

        run()
        out[f"stock {name}"] = timed(run, runs)
    return out


def stock_smartnoise(path: Path, rows: int, runs: int) -> dict[str, float]:
    """The SQL queries through stock smartnoise-sql (bench/stock_smartnoise.py), p50 per query."""
    times = stock_times(path, metadata(rows), SQL, runs, EPSILON, DELTA)
    return {name: p50(values) for name, values in times.items()}


def _dec(value: float) -> Any:
    from decimal import Decimal

    return Decimal(repr(value))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--redis-url", default="", help="default: a private Redis")
    parser.add_argument(
        "--work-dir", default="", help="keep datasets and logs here (default: temp)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    dp.enable_features("contrib")
    rows_out: list[QueryRow | MemoryRow] = []
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(args.work_dir or directory)
        tmp.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(tmp).free
        needed = sum(sizes) * 20  # Parquet is ~10 bytes a row here; keep twice that free
        if free < needed:
            raise SystemExit(f"not enough disk space in {tmp}: {free} bytes free, {needed} needed")
        available = psutil.virtual_memory().available
        if available < max(sizes) * 400:
            print(f"warning: {available / 2**30:.1f} GiB of memory available may not be enough")
        private = None if args.redis_url else PrivateRedis(tmp / "redis")
        redis_url = private.url if private is not None else args.redis_url
        try:
            for rows in sizes:
                data_dir = tmp / f"rows-{rows}"
                data_dir.mkdir()
                began = time.perf_counter()
                path = write_dataset(data_dir / "data.parquet", rows)
                print(
                    f"{rows:>11,} rows: {path.stat().st_size / 2**20:.0f} MiB of Parquet written in "
                    f"{time.perf_counter() - began:.1f} s",
                    flush=True,
                )
                # The in-process floor is timed before and after the platform (the median of
                # both), so that a drift of this machine's speed does not favour either side.
                before = in_process(path, rows, args.runs) | stock_opendp(path, rows, args.runs)
                stock = stock_smartnoise(path, rows, args.runs)
                platform, memory = platform_run(data_dir, redis_url, path, rows, args.runs)
                after = in_process(path, rows, args.runs) | stock_opendp(path, rows, args.runs)
                for name in platform:
                    floor = p50(before[name] + after[name])
                    library = stock.get(name) or p50(
                        before[f"stock {name}"] + after[f"stock {name}"]
                    )
                    rows_out.append(QueryRow(rows, name, platform[name], floor, library))
                rows_out.append(MemoryRow(rows, memory.peak_child, memory.peak_tree))
        finally:
            if private is not None:
                private.stop()
    print()
    header = (
        f"{'rows':>11} {'query':<20} {'cold':>10} {'warm p50':>10} {'in-process':>11} "
        f"{'warm/engine':>11} {'library':>11} {'warm/library':>12} {'cost p50':>9}"
    )
    print(header)
    for row in rows_out:
        if isinstance(row, MemoryRow):
            print(
                f"{row.rows:>11,} peak worker memory: {row.peak_child / 2**20:,.0f} MiB (busiest "
                f"child), {row.peak_tree / 2**20:,.0f} MiB (the peaks of the worker and its "
                "children, summed)"
            )
            continue
        warm, library, floor_time = row.platform["warm"], row.library, row.floor
        aim = "ok" if warm / library <= AIM_RATIO else "MISSED"
        print(
            f"{row.rows:>11,} {row.name:<20} {row.platform['cold']:>8.0f}ms {warm:>8.1f}ms "
            f"{floor_time:>9.1f}ms {warm / floor_time:>10.2f}x {library:>9.1f}ms "
            f"{warm / library:>5.2f}x {aim:<6} {row.platform['cost']:>7.1f}ms"
        )


if __name__ == "__main__":
    main()
