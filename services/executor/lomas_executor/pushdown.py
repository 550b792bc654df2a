"""Datasets a worker never loads whole: PostgreSQL tables, Spark folders and large Parquet files.

`QueryEngine` asks `DataPlaces` three things, at three moments:

* `check_query` (with the cost estimate, before any charge): may this kind of query run where this
  dataset is? SmartNoise-SQL runs in PostgreSQL and Spark (its SQL checked by `pushdown_sql`);
  OpenDP Polars plans run on a Spark dataset's folder when it is on the worker's file system
  (scanned lazily by Polars); every other combination is refused with FAILED_PRECONDITION,
  QUERY_KIND_UNSUPPORTED_BY_SOURCE (OpenDP's engines, like the other engines, need the rows in the
  worker: exactly what these datasets avoid).
* `preflight` (before the reservation is marked accessed): the credentials exist and the database
  answers (a PostgreSQL dataset), the folder exists and, for a SmartNoise-SQL query, the worker's
  Spark session is up (a Spark dataset: its JVM's start is the slow, fallible step), so a failure
  there can still be refunded.
* `engine_input` (the run): the reader or frame the engine gets instead of a loaded table; None
  when the dataset is loaded as usual. Nothing here enters the dataset cache: its byte budget is
  for tables held in memory (a PostgreSQL reader holds a name, a Spark view lives in the Spark
  session, a lazy scan is a plan).

Large Parquet files: an OpenDP Polars plan on a local Parquet file of `lazy_parquet_bytes` or more
(LOMAS_LAZY_PARQUET_BYTES), or on a Spark dataset's local folder, scans it lazily (`scan_parquet`:
Arrow record batches, one at a time) and OpenDP collects it with Polars' streaming engine, so the
worker's memory stays bounded by the plan, not the file (peak 408 MB at 50M rows, 422 MB at 100M,
against 290 MB for a worker that only imported its engines: bench/beyond_memory.py); smaller files
are loaded and cached as before (faster for repeated queries).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from lomas_common.errors import FailedPrecondition
from lomas_executor import pushdown_postgres, pushdown_sql
from lomas_executor.cache import SQL_READER
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import OpenDpPolarsQuery
from lomas_executor.pushdown_spark import SparkSessions
from lomas_executor.settings import DEFAULT_LAZY_PARQUET_BYTES, QueryLimits, SparkSettings
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.sources import (
    DataFormat,
    DataSource,
    SourceKind,
    SourceSecrets,
    check_source,
    is_local_path,
    local_path,
)

# The engine name `QueryEngine` gives OpenDP Polars plans.
OPENDP_POLARS = "opendp_polars"
# Read by the Polars inside OpenDP at every collect (see `scan_parquet`).
POLARS_STREAMING_ENV = "POLARS_AUTO_NEW_STREAMING"
# Rows per batch the scan hands Polars when Polars gives no hint.
SCAN_BATCH_ROWS = 100_000
# The read buffer of each Parquet file the scan streams.
SCAN_BUFFER_BYTES = 1024 * 1024
__all__ = ["DEFAULT_LAZY_PARQUET_BYTES", "DataPlaces", "scan_parquet"]


class DataPlaces:
    """Where queries run for datasets that stay where they are (see the module docstring)."""

    def __init__(
        self,
        secrets: SourceSecrets,
        spark: SparkSettings | None = None,
        lazy_parquet_bytes: int = DEFAULT_LAZY_PARQUET_BYTES,
    ) -> None:
        self._secrets = secrets
        self.spark = SparkSessions(spark)
        self._lazy_parquet_bytes = lazy_parquet_bytes
        use_streaming_engine()

    def check_query(
        self,
        query: object,
        source: DataSource,
        metadata: DatasetMetadata,
        limits: QueryLimits,
    ) -> None:
        """Refuse, before any charge, a query that cannot run where `source` is."""
        if not source.kind.pushdown:
            return
        if isinstance(query, SmartnoiseSqlQuery):
            pushdown_sql.check_pushdown(query, metadata, limits.sql)
            return
        if (
            isinstance(query, OpenDpPolarsQuery)
            and source.kind is SourceKind.SPARK
            and is_local_path(source.path)
        ):
            return
        if source.kind is SourceKind.POSTGRES:
            runs = "a PostgreSQL table, which runs SmartNoise-SQL queries only"
        else:
            runs = (
                "a Spark folder, which runs SmartNoise-SQL queries (and OpenDP Polars plans when "
                "the folder is on the workers' file system) only"
            )
        raise FailedPrecondition(
            f"this dataset is {runs}, not {type(query).__name__}",
            reason="QUERY_KIND_UNSUPPORTED_BY_SOURCE",
            metadata={"source": source.kind.value},
        )

    def preflight(self, source: DataSource, query: object = None) -> None:
        """Before any data access: refuse a source that certainly cannot be queried now by
        `query` (None: by any query). Only SmartNoise-SQL runs in Spark: an OpenDP plan on a
        Spark folder starts no JVM."""
        check_source(source, self._secrets)
        if source.kind is SourceKind.POSTGRES:
            pushdown_postgres.check_reachable(source, self._secrets)
        elif source.kind is SourceKind.SPARK and (
            query is None or isinstance(query, SmartnoiseSqlQuery)
        ):
            self.spark.ensure_live()

    def stays_in_place(self, source: DataSource, fmt: DataFormat, engine: str) -> bool:
        """Whether `engine`'s input on this dataset is built here rather than loaded and cached."""
        return source.kind.pushdown or (engine == OPENDP_POLARS and self._lazy(source, fmt))

    def engine_input(self, source: DataSource, metadata: DatasetMetadata, engine: str) -> object:
        """The input `engine` runs on, for a dataset where `stays_in_place` is true."""
        if engine == SQL_READER and source.kind is SourceKind.POSTGRES:
            return pushdown_postgres.postgres_reader(source, self._secrets)
        if engine == SQL_READER and source.kind is SourceKind.SPARK:
            return self.spark.reader(source, metadata)
        if engine == OPENDP_POLARS:
            return scan_parquet(source, metadata)
        raise FailedPrecondition(
            f"a {source.kind.value} dataset cannot feed the {engine} engine",
            reason="QUERY_KIND_UNSUPPORTED_BY_SOURCE",
            metadata={"source": source.kind.value},
        )

    def _lazy(self, source: DataSource, fmt: DataFormat) -> bool:
        if source.kind is SourceKind.SPARK:
            return is_local_path(source.path)
        if source.kind is not SourceKind.LOCAL or fmt is not DataFormat.PARQUET:
            return False
        try:
            return Path(source.path).stat().st_size >= self._lazy_parquet_bytes
        except OSError:
            return False  # the load reports it


def scan_parquet(source: DataSource, metadata: DatasetMetadata) -> pl.LazyFrame:
    """A lazy scan of a local Parquet file or folder, as `opendp_queries.prepare_polars` would
    shape the loaded table: the metadata's columns with its types (NaN as null).

    How it stays bounded in memory, with the pinned opendp 0.14.2 (which embeds Polars' Rust
    crates 0.50, the engine of Python Polars 1.32):

    * OpenDP runs the privatized plan itself: `OnceFrame.collect()` takes no engine argument and
      calls Rust `LazyFrame::collect()`. That collect runs Polars' streaming engine when the
      process's environment has POLARS_AUTO_NEW_STREAMING=1 at the call (falling back to the
      in-memory engine for a plan the streaming engine does not implement; FORCE instead of
      AUTO would turn that "not yet implemented" panic into an abort of the worker, since the
      panic cannot unwind through OpenDP's C interface); a Python-side
      `pl.Config.set_engine_affinity` or `collect(engine="streaming")` never reaches it, and
      `OnceFrame.lazy()` (a Python collect of our own) needs OpenDP's "honest-but-curious"
      feature, which the platform never enables. `use_streaming_engine` sets the variable.
    * OpenDP's Polars is built without Polars' Parquet reader: a `pl.scan_parquet` plan is refused
      ("unknown variant `Parquet`, expected `Csv` or `PythonDataset`"). A Python scan is accepted,
      but the streaming engine does not implement `pl.scan_pyarrow_dataset` (the in-memory
      engine then materialises every column the plan reads: 1.8 GB at 50M rows). An IO-plugin
      scan (`register_io_source`) streams: `_parquet_batches` yields Arrow record batches from
      the Parquet files, one at a time, projected and filtered as Polars asks.

    The scan reads only the columns the plan uses; Polars hands it the plan's filter, which it
    applies to each batch."""
    import pyarrow.dataset as pads
    from polars.io.plugins import register_io_source

    # Arrow's dataset discovery: the folder's Parquet files, in order (names starting with "_"
    # or "." skipped, as Spark writes them).
    files = tuple(pads.dataset(str(local_path(source.path)), format="parquet").files)
    empty = pl.from_arrow(metadata.arrow_schema().empty_table())
    assert isinstance(empty, pl.DataFrame)
    floats = frozenset(
        name for name in metadata.column_names if metadata.column_type(name) == "float"
    )
    return register_io_source(
        functools.partial(_parquet_batches, files, dict(empty.schema), floats),
        schema=empty.schema,
    )


def _parquet_batches(
    files: tuple[str, ...],
    schema: dict[str, pl.DataType],
    floats: frozenset[str],
    with_columns: list[str] | None,
    predicate: pl.Expr | None,
    n_rows: int | None,
    batch_size: int | None,
) -> Iterator[pl.DataFrame]:
    """The IO plugin of `scan_parquet`: the files' rows, batch by batch, with the columns Polars
    asks for (cast to the metadata's types, NaN as null), filtered by its predicate (Polars does
    not filter an IO plugin's rows again), and no more than `n_rows` of them.

    Each file is read as a buffered stream, one batch at a time (`ParquetFile.iter_batches`):
    Arrow's dataset scanner reads whole column chunks ahead and keeps about 100 MB more."""
    import pyarrow.parquet as pq

    columns = list(schema) if with_columns is None else with_columns
    left = n_rows
    for file in files:
        reader = pq.ParquetFile(file, buffer_size=SCAN_BUFFER_BYTES, pre_buffer=False)
        with reader:
            for batch in reader.iter_batches(
                batch_size=batch_size or SCAN_BATCH_ROWS, columns=columns, use_threads=False
            ):
                if left is not None and left <= 0:
                    return
                loaded = pl.from_arrow(batch)
                assert isinstance(loaded, pl.DataFrame)
                frame = loaded.select(
                    pl.col(name).cast(schema[name]).fill_nan(None)
                    if name in floats
                    else pl.col(name).cast(schema[name])
                    for name in columns
                )
                if predicate is not None:
                    frame = frame.filter(predicate)
                if left is not None:
                    frame = frame.head(left)
                    left -= frame.height
                yield frame


def use_streaming_engine() -> None:
    """Ask the Polars inside OpenDP (and the process's Python Polars) to try the streaming engine
    first at every collect (see `scan_parquet`), for every plan of the process: dummy runs and
    real runs, lazy scans and loaded tables alike, whatever ran before. Set when the engine is
    built, before the process collects anything; an operator's own value (0 keeps the in-memory
    engine) is left alone."""
    os.environ.setdefault(POLARS_STREAMING_ENV, "1")
