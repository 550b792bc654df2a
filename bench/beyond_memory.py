"""Data beyond one machine's memory: queries pushed down to PostgreSQL and Spark, and OpenDP Polars
plans scanning Parquet lazily, at tens of millions of rows.

Generates, never whole in memory: a PostgreSQL table (server side, `INSERT ... SELECT FROM
generate_series` in chunks of 1M rows) behind a read-only role, and a folder of Parquet files (one
file per 1M-row chunk). Then, for COUNT, GROUP BY AVG and a filtered SUM:

* through the executor engine path a worker runs (`QueryEngine` as `QueryRunner` builds it: the
  preflight, the cost re-check, the pushed-down SQL, the noise), in a fresh process per source,
  whose peak resident memory is the worker's (for Spark, the JVM's is reported apart);
* the same aggregate run directly (psycopg against PostgreSQL, `spark.sql` in the same Spark
  session, Polars' own streaming engine on the folder): the floor, measured in the same run.

Platform and direct runs alternate, round by round (`--repeat`, medians reported), so both see the
same machine; the worker's first query (imports, parsed metadata: once per worker process) and the
Spark session's start are reported apart.

    .venv/bin/python bench/beyond_memory.py [--rows 5000000] [--sources postgres,spark,polars]
        [--repeat 3] [--keep] [--table SCHEMA:ROLE] [--lake DIR]

`--keep` leaves the generated table and folder, which `--table` and `--lake` then reuse.

Targets (issue 18): worker peak memory under 500 MB at 50M rows for PostgreSQL and
Polars-streaming, platform time within 1.3x of the direct PostgreSQL aggregate.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from psycopg import sql

from lomas_executor.demo import penguin_metadata_text
from lomas_testing.pushdown_data import admin_url

CHUNK = 1_000_000
QUERIES = {
    "count": "SELECT COUNT(*) AS n FROM df",
    "group_avg": "SELECT species, AVG(bill_length_mm) AS b FROM df GROUP BY species",
    "filtered_sum": "SELECT SUM(body_mass_g) AS s FROM df WHERE island = 'Biscoe'",
}
DIRECT = {
    "count": "SELECT COUNT(*) FROM {t}",
    "group_avg": "SELECT species, AVG(bill_length_mm) FROM {t} GROUP BY species",
    "filtered_sum": "SELECT SUM(body_mass_g) FROM {t} WHERE island = 'Biscoe'",
}


def metadata(rows: int) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(penguin_metadata_text())
    document["rows"] = rows
    return document


# -- data ------------------------------------------------------------------------------------------


def make_table(rows: int, suffix: str) -> tuple[str, str]:
    schema, role = f"bench_beyond_{suffix}", f"bench_reader_{suffix}"
    with psycopg.connect(admin_url(), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        connection.execute(
            sql.SQL(
                "CREATE UNLOGGED TABLE {}.penguins (species text, island text, bill_length_mm "
                "float8, bill_depth_mm float8, flipper_length_mm float8, body_mass_g float8, "
                "sex text)"
            ).format(sql.Identifier(schema))
        )
        connection.execute("SELECT setseed(0.5)")
        for start in range(0, rows, CHUNK):
            end = min(start + CHUNK, rows)
            connection.execute(
                sql.SQL(
                    "INSERT INTO {}.penguins SELECT (ARRAY['Adelie','Chinstrap','Gentoo'])[1 + i %% 3], "
                    "(ARRAY['Torgersen','Biscoe','Dream'])[1 + (i / 3) %% 3], 30 + random() * 35, "
                    "13 + random() * 10, 150 + random() * 100, 2000 + random() * 5000, "
                    "(ARRAY['MALE','FEMALE'])[1 + i %% 2] FROM generate_series(%s::bigint, %s) AS i"
                ).format(sql.Identifier(schema)),
                (start, end - 1),
            )
        connection.execute(sql.SQL("VACUUM ANALYZE {}.penguins").format(sql.Identifier(schema)))
        connection.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
        connection.execute(
            sql.SQL("GRANT SELECT ON {}.penguins TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
    return schema, role


def drop_table(schema: str, role: str) -> None:
    with psycopg.connect(admin_url(), autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
        connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def make_folder(rows: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    species = np.array(["Adelie", "Chinstrap", "Gentoo"])
    islands = np.array(["Torgersen", "Biscoe", "Dream"])
    sexes = np.array(["MALE", "FEMALE"])
    for index, start in enumerate(range(0, rows, CHUNK)):
        n = min(CHUNK, rows - start)
        table = pa.table(
            {
                "species": species[rng.integers(0, 3, n)],
                "island": islands[rng.integers(0, 3, n)],
                "bill_length_mm": rng.uniform(30, 65, n),
                "bill_depth_mm": rng.uniform(13, 23, n),
                "flipper_length_mm": rng.uniform(150, 250, n),
                "body_mass_g": rng.uniform(2000, 7000, n),
                "sex": sexes[rng.integers(0, 2, n)],
            }
        )
        pq.write_table(table, folder / f"part-{index:05d}.parquet")


# -- one source, in a fresh process (its peak memory is the worker's) -------------------------------


def child(args: argparse.Namespace) -> None:
    """One source through the worker's engine path, in this fresh process, and the same aggregates
    run directly (PostgreSQL, Spark: they run in the database or the JVM, not in this process),
    interleaved round by round so that both see the same machine; medians of `--repeat` rounds.
    The engines are imported and smartnoise-sql's parser warmed first, as `lomas-worker` does
    before it forks; the first query of a worker process (the rest of the lazily built state) is
    timed apart, as the Spark session's start is: a worker pays them once, not per query."""
    from lomas_executor.cache import DatasetCache
    from lomas_executor.engine import DatasetRef, QueryEngine
    from lomas_executor.metadata import DatasetMetadata
    from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
    from lomas_executor.sources import DataFormat, DataSource, PostgresCredentials, SourceSecrets
    from lomas_executor.worker import preload_engines

    preload_engines()  # as `lomas-worker` does before it forks the children that run queries
    md = DatasetMetadata.from_dict(metadata(args.rows))
    info = psycopg.conninfo.conninfo_to_dict(admin_url())
    credentials = PostgresCredentials(
        str(info.get("host", "127.0.0.1")), str(info.get("dbname", "test")), args.role
    )
    engine = QueryEngine(
        DatasetCache(max_bytes=2 * 1024**3),
        SourceSecrets(postgres={"bench": credentials}),
        sql_dry_run=False,
        lazy_parquet_bytes=0,
    )
    if args.child == "postgres":
        source, fmt = DataSource.postgres("bench", args.schema, "penguins"), DataFormat.TABLE
    else:
        source, fmt = DataSource.spark(args.folder), DataFormat.PARQUET
    dataset = DatasetRef("BENCH", 1, source, fmt, md)
    results: dict[str, Any] = {}
    if args.child == "spark":  # the JVM's start, once per worker process, apart
        started = time.perf_counter()
        engine._places.spark.session()
        results["session_start"] = time.perf_counter() - started
    queries: dict[str, Any] = (
        polars_plans()
        if args.child == "polars"
        else {
            name: SmartnoiseSqlQuery(text, Decimal("1"), Decimal("0"))
            for name, text in QUERIES.items()
        }
    )

    def platform(name: str) -> float:
        started = time.perf_counter()
        engine.preflight(dataset, queries[name])
        engine.estimate_cost(queries[name], dataset)
        engine.run(queries[name], dataset)
        return time.perf_counter() - started

    direct = direct_runner(args)
    results["first_query"] = platform(next(iter(queries)))
    if direct is not None:
        direct(next(iter(queries)))  # the floor's warm-up (connection, JVM code paths)
    timed: dict[str, list[float]] = {name: [] for name in queries}
    floors: dict[str, list[float]] = {name: [] for name in queries}
    for round_ in range(args.repeat):
        for name in queries:
            if direct is not None and round_ % 2:
                floors[name].append(direct(name))
            timed[name].append(platform(name))
            if direct is not None and not round_ % 2:
                floors[name].append(direct(name))
    results["platform"] = {name: statistics.median(times) for name, times in timed.items()}
    if direct is not None:
        results["direct"] = {name: statistics.median(times) for name, times in floors.items()}
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["children_peak_rss_mb"] = children_peak_mb()
    print(json.dumps(results))


def direct_runner(args: argparse.Namespace) -> Callable[[str], float] | None:
    """The same aggregate run directly, for a source that runs it outside this process: psycopg
    on one open connection (PostgreSQL), `spark.sql` in the worker's Spark session on a view of
    its own (Spark). None for Polars, whose floor runs in this bench's own process."""
    if args.child == "postgres":
        connection = psycopg.connect(admin_url())
        table = f'"{args.schema}".penguins'

        def postgres(name: str) -> float:
            started = time.perf_counter()
            connection.execute(DIRECT[name].format(t=table)).fetchall()
            connection.rollback()
            return time.perf_counter() - started

        return postgres
    if args.child == "spark":
        from pyspark.sql import SparkSession

        session = SparkSession.builder.getOrCreate()  # the worker's session, started above
        session.read.parquet(args.folder).createOrReplaceTempView("direct")

        def spark(name: str) -> float:
            started = time.perf_counter()
            session.sql(DIRECT[name].format(t="direct")).collect()
            return time.perf_counter() - started

        return spark
    return None


def children_peak_mb() -> float:
    """The peak resident memory of this process's live children (the Spark JVM), from Linux."""
    import psutil

    peak = 0.0
    for process in psutil.Process().children(recursive=True):
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak += int(line.split()[1]) / 1024
    return peak


def polars_plans() -> dict[str, Any]:
    import polars as pl
    from opendp.extras.polars import DPExpr, dp_len

    from lomas_executor.opendp_model import OpenDpPolarsQuery

    frame = pl.LazyFrame(schema={"island": pl.String, "body_mass_g": pl.Float64})
    plans = {
        "count": frame.select(dp_len(scale=10.0)),
        "filtered_sum": frame.filter(pl.col("island") == "Biscoe").select(
            DPExpr(pl.col("body_mass_g").fill_null(4000.0)).sum((2000.0, 7000.0), scale=1e5)
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            name: OpenDpPolarsQuery(plan.serialize(format="json")) for name, plan in plans.items()
        }


def run_child(kind: str, args: argparse.Namespace, **extra: str) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", kind, "--rows", str(args.rows)]
    argv += ["--repeat", str(args.repeat)]
    for key, value in extra.items():
        argv += [f"--{key}", value]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {kind} run failed:\n{done.stderr[-3000:]}")
    output = done.stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def polars_floor(folder: Path, repeat: int) -> dict[str, float]:
    """Polars' own streaming engine on the folder (`pl.scan_parquet`), in this process."""
    import polars as pl

    scan = pl.scan_parquet(str(folder / "*.parquet"))
    plans = {
        "count": scan.select(pl.len()),
        "filtered_sum": scan.filter(pl.col("island") == "Biscoe").select(
            pl.col("body_mass_g").sum()
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(repeat):
        for name, plan in plans.items():
            started = time.perf_counter()
            plan.collect(engine="streaming")
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def report(source: str, result: dict[str, Any], floor: dict[str, float]) -> None:
    print(f"\n{source}: worker peak RSS {result['peak_rss_mb']:.0f} MB", end="")
    if source == "spark":
        print(
            f" (the Spark JVM, its child: {result['children_peak_rss_mb']:.0f} MB; session "
            f"started once in {result['session_start']:.1f} s, not counted below)",
            end="",
        )
    print(f"; the worker's first query (cold) {result['first_query']:.3f} s")
    print(f"  {'query':<14}{'platform s':>12}{'direct s':>12}{'ratio':>8}   (medians)")
    platform = result["platform"]
    for name, seconds in floor.items():
        print(
            f"  {name:<14}{platform[name]:>12.3f}{seconds:>12.3f}{platform[name] / seconds:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--sources", default="postgres,spark,polars")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per query (medians)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument(
        "--table", default="", help="SCHEMA:ROLE of a table a --keep run left (not generated)"
    )
    parser.add_argument("--lake", default="", help="a Parquet folder a --keep run left")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--schema", default="", help=argparse.SUPPRESS)
    parser.add_argument("--role", default="", help=argparse.SUPPRESS)
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sources = set(args.sources.split(","))
    suffix = f"{args.rows}_{int(time.time())}"
    print(f"{args.rows:,} rows, {args.repeat} rounds")
    if "postgres" in sources:
        if args.table:
            schema, role = args.table.split(":")
        else:
            started = time.perf_counter()
            schema, role = make_table(args.rows, suffix)
            print(f"PostgreSQL table generated in {time.perf_counter() - started:.0f} s")
            if args.keep:
                print(f"kept: --table {schema}:{role}")
        try:
            result = run_child("postgres", args, schema=schema, role=role)
            report("postgres", result, result["direct"])
        finally:
            if not (args.keep or args.table):
                drop_table(schema, role)
    if sources & {"spark", "polars"}:
        folder = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="lomas-beyond-"))
        if not args.lake:
            started = time.perf_counter()
            make_folder(args.rows, folder)
            print(f"Parquet folder generated in {time.perf_counter() - started:.0f} s")
            if args.keep:
                print(f"kept: --lake {folder}")
        if "spark" in sources:
            result = run_child("spark", args, folder=str(folder))
            report("spark", result, result["direct"])
        if "polars" in sources:
            result = run_child("polars", args, folder=str(folder))
            report("polars", result, polars_floor(folder, args.repeat))
        if not (args.keep or args.lake):
            for file in folder.iterdir():
                file.unlink()
            folder.rmdir()


if __name__ == "__main__":
    main()
