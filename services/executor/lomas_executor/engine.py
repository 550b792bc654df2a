"""The executor's facade: what the gRPC servicer and the Celery worker call.

`QueryEngine` dispatches on the query's type (SmartNoise-SQL, OpenDP measurement, OpenDP Polars),
loads datasets through the byte-bounded cache, and keeps the phases honest:

* `estimate_cost`, `dummy_frame` and `run_dummy` never touch the real data;
* sizes a query chooses are checked against `QueryLimits` before anything is allocated, on the
  dummy path and before a real run loads data alike;
* `run` validates the query before loading anything, so an invalid query fails with QUERY_INVALID
  (or a more specific refusal) and no data access; after loading, failures are
  QUERY_EXECUTION_FAILED without data values.

A loaded dataset is the Arrow table plus what each engine prepares from it, built on the engine's
first query and kept with the table in the cache. Loading version N of a dataset drops its older
versions from the cache, table and preparations alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import cast

import pandas as pd
import polars as pl
import pyarrow as pa

from lomas_common.errors import InvalidQuery
from lomas_common.privacy import PrivacyLoss, format_decimal
from lomas_executor import (
    accuracy,
    diffprivlib_model,
    diffprivlib_queries,
    opendp_queries,
    smartnoise_sql,
    smartnoise_synth,
)
from lomas_executor.accuracy import ColumnAccuracy
from lomas_executor.cache import SQL_READER, DatasetCache, LoadedDataset
from lomas_executor.diffprivlib_model import DiffPrivLibQuery
from lomas_executor.dummy import make_dummy_frame
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.opendp_model import OpenDpMeasurementQuery, OpenDpPolarsQuery
from lomas_executor.pushdown import DEFAULT_LAZY_PARQUET_BYTES, DataPlaces
from lomas_executor.settings import QueryLimits, SparkSettings
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.smartnoise_synth import SmartnoiseSynthQuery
from lomas_executor.sources import DataFormat, DataSource, S3Secrets, check_source, load_table

# Every query kind the engine runs. Add new dataclasses here and a `case` in each dispatch below.
Query = (
    SmartnoiseSqlQuery
    | OpenDpMeasurementQuery
    | OpenDpPolarsQuery
    | DiffPrivLibQuery
    | SmartnoiseSynthQuery
)

OPENDP_CSV = "opendp_csv"
OPENDP_POLARS = "opendp_polars"
# The loaded Arrow table itself, without preparation (DiffPrivLib selects its columns per query).
ARROW_TABLE = "arrow_table"


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """Everything the executor needs to know about one version of a dataset."""

    name: str
    version: int
    source: DataSource
    fmt: DataFormat
    metadata: DatasetMetadata


class QueryEngine:
    def __init__(
        self,
        cache: DatasetCache,
        s3_secrets: S3Secrets | None = None,
        limits: QueryLimits | None = None,
        *,
        sql_dry_run: bool = True,
        spark: SparkSettings | None = None,
        lazy_parquet_bytes: int = DEFAULT_LAZY_PARQUET_BYTES,
    ) -> None:
        """`sql_dry_run=False` (the worker's engine) prices SmartNoise-SQL queries without the dry
        run on an empty table (see `smartnoise_sql.estimate_cost`). `spark` and
        `lazy_parquet_bytes`: datasets queried where they are (`lomas_executor.pushdown`)."""
        self._cache = cache
        self._s3_secrets = s3_secrets or S3Secrets()
        self._limits = limits or QueryLimits()
        self._sql_dry_run = sql_dry_run
        self._places = DataPlaces(self._s3_secrets, spark, lazy_parquet_bytes)

    @property
    def cache(self) -> DatasetCache:
        return self._cache

    def estimate_cost(self, query: Query, dataset: DatasetRef) -> PrivacyLoss:
        """The privacy loss `query` will be charged (rounded up); validates it; no data access.
        A delta above the dataset's maximum (`DatasetMetadata.max_delta`) is refused."""
        match query:
            case SmartnoiseSqlQuery():
                cost = smartnoise_sql.estimate_cost(
                    query, dataset.metadata, self._limits.sql, dry_run=self._sql_dry_run
                )
            case OpenDpMeasurementQuery() | OpenDpPolarsQuery():
                cost = opendp_queries.estimate_cost(query, dataset.metadata, self._limits).as_cost()
            case DiffPrivLibQuery():
                cost = diffprivlib_model.parse_pipeline(query, dataset.metadata).cost
            case SmartnoiseSynthQuery():
                cost = smartnoise_synth.estimate_cost(
                    query, dataset.metadata, self._limits.synth, self._limits.sql
                )
            case _:
                raise _unsupported(query)
        _check_delta(cost, dataset.metadata)
        # Where the dataset stays in its database or folder: only what can run there, checked.
        self._places.check_query(query, dataset.source, dataset.metadata, self._limits)
        return cost

    def estimate_accuracy(
        self, query: Query, dataset: DatasetRef, alpha: float
    ) -> list[ColumnAccuracy]:
        """Per output column, the half-width of the (1 - alpha) interval of the noise the query's
        release will carry (see `lomas_executor.accuracy`); validates it as `estimate_cost` does;
        no data access."""
        self.estimate_cost(query, dataset)
        match query:
            case SmartnoiseSqlQuery():
                return accuracy.sql_accuracy(query, dataset.metadata, self._limits.sql, alpha)
            case OpenDpMeasurementQuery() | OpenDpPolarsQuery():
                return accuracy.opendp_accuracy(query, dataset.metadata, self._limits, alpha)
            case DiffPrivLibQuery():
                # A trained model has no output columns with a noise interval: refused, free.
                raise InvalidQuery(
                    "DiffPrivLib queries have no accuracy estimate: their release is a trained "
                    "model (try a dummy run to see its parameters and score)"
                )
            case SmartnoiseSynthQuery():
                # Samples have no per-column noise interval in closed form: refused, free.
                raise InvalidQuery(
                    "SmartNoise-Synth queries have no accuracy estimate: their release is "
                    "synthetic samples (try a dummy run to see their shape)"
                )
            case _:
                raise _unsupported(query)

    def canonical_sql(self, query: Query, dataset: DatasetRef) -> str | None:
        """A SmartNoise-SQL query's SQL as the engine's parser reads it (None for other kinds);
        see `lomas_executor.canonical`. Validates the query as `estimate_cost` does."""
        if isinstance(query, SmartnoiseSqlQuery):
            return smartnoise_sql.canonical_text(query, dataset.metadata, self._limits.sql)
        return None

    def dummy_frame(self, dataset: DatasetRef, rows: int, seed: int) -> pd.DataFrame:
        """Seeded dummy data following the dataset's metadata."""
        return self._dummy(dataset.metadata, rows, seed)

    def run_dummy(self, query: Query, dataset: DatasetRef, rows: int, seed: int) -> pd.DataFrame:
        """Run `query` on seeded dummy data (free: the caller reports the real cost separately)."""
        metadata = dataset.metadata

        def dummy_input(engine: str) -> object:
            frame = self._dummy(metadata, rows, seed)
            if engine == SQL_READER:
                return smartnoise_sql.prepare_reader(frame, metadata)
            if engine == ARROW_TABLE:
                return pa.Table.from_pandas(
                    frame, schema=metadata.arrow_schema(), preserve_index=False
                )
            table = opendp_queries.dummy_table(frame, metadata)
            if engine == OPENDP_CSV:
                return opendp_queries.prepare_csv(table, metadata)
            return opendp_queries.prepare_polars(table, metadata)

        return self._validate_then_run(query, metadata, dummy_input, dummy=True)

    def _dummy(self, metadata: DatasetMetadata, rows: int, seed: int) -> pd.DataFrame:
        return make_dummy_frame(metadata, rows, seed, max_cells=self._limits.max_dummy_cells)

    def run(self, query: Query, dataset: DatasetRef) -> pd.DataFrame:
        """Run `query` on the real data and return its DP release."""
        return self._validate_then_run(
            query, dataset.metadata, lambda engine: self.prepared(dataset, engine)
        )

    def _validate_then_run(
        self,
        query: Query,
        metadata: DatasetMetadata,
        engine_input: Callable[[str], object],
        *,
        dummy: bool = False,
    ) -> pd.DataFrame:
        """Validate `query` (limits included), then run it on `engine_input(engine)`: the input its
        engine needs, built (dummy data) or loaded (real data) only once the query has passed.
        `dummy`: the input is public dummy data (DiffPrivLib then releases its exact score)."""
        match query:
            case SmartnoiseSqlQuery():
                smartnoise_sql.estimate_cost(
                    query, metadata, self._limits.sql, dry_run=self._sql_dry_run
                )
                reader = cast(smartnoise_sql.SqliteTableReader, engine_input(SQL_READER))
                return smartnoise_sql.execute(
                    query, reader, metadata, validated=True, limits=self._limits.sql
                )
            case OpenDpMeasurementQuery():
                measurement = opendp_queries.build_measurement(query, metadata, self._limits)
                text = cast(str, engine_input(OPENDP_CSV))
                return opendp_queries.execute(query, text, metadata, measurement)
            case OpenDpPolarsQuery():
                measurement = opendp_queries.build_measurement(query, metadata, self._limits)
                frame = cast(pl.DataFrame, engine_input(OPENDP_POLARS))
                return opendp_queries.execute(query, frame, metadata, measurement)
            case DiffPrivLibQuery():
                pipeline = diffprivlib_model.parse_pipeline(query, metadata)
                table = cast(pa.Table, engine_input(ARROW_TABLE))
                return diffprivlib_queries.execute(pipeline, table, dummy=dummy)
            case SmartnoiseSynthQuery():
                plan = smartnoise_synth.plan(query, metadata, self._limits.synth, self._limits.sql)
                # Imported here: it loads JAX, which only syntheses need.
                from lomas_executor import smartnoise_synth_run

                table = cast(pa.Table, engine_input(ARROW_TABLE))
                return smartnoise_synth_run.execute(plan, table)
            case _:
                raise _unsupported(query)

    def preflight(self, dataset: DatasetRef, query: Query | None = None) -> None:
        """Before any data access: refuse a dataset whose source certainly cannot be read (so its
        reservation can still be refunded). A cached dataset needs no source at all; a database
        must answer; what `query` (None: any query) runs on must be up (a Spark session)."""
        if dataset.source.kind.pushdown:
            self._places.preflight(dataset.source, query)
        elif self._cache.get((dataset.name, dataset.version)) is None:
            check_source(dataset.source, self._s3_secrets)

    def load(self, dataset: DatasetRef) -> LoadedDataset:
        """The dataset's table (and what engines prepared from it), from the cache or loaded once."""
        key = (dataset.name, dataset.version)

        def load() -> LoadedDataset:
            table = load_table(
                dataset.source,
                dataset.fmt,
                schema=dataset.metadata.arrow_schema(),
                s3_secrets=self._s3_secrets,
            )
            # A new version replaces the old ones: drop their tables and preparations now.
            self._cache.invalidate_dataset(dataset.name, older_than=dataset.version)
            return LoadedDataset(table)

        return self._cache.get_or_load(key, load)

    def prepared(self, dataset: DatasetRef, engine: str) -> object:
        """What `engine` needs from the dataset, prepared once per dataset version and cached;
        for a dataset that stays where it is, a reader or a lazy scan, never cached."""
        if self._places.stays_in_place(dataset.source, dataset.fmt, engine):
            return self._places.engine_input(dataset.source, dataset.metadata, engine)
        loaded = self.load(dataset)
        if engine == ARROW_TABLE:
            return loaded.table
        metadata = dataset.metadata
        fresh = not loaded.has(engine)
        if engine == SQL_READER:
            value: object = loaded.prepared(
                engine,
                lambda table: smartnoise_sql.prepare_reader(table, metadata),
                lambda reader: reader.nbytes,
            )
        elif engine == OPENDP_CSV:
            value = loaded.prepared(
                engine,
                lambda table: opendp_queries.prepare_csv(table, metadata),
                lambda text: len(text),
            )
        elif engine == OPENDP_POLARS:
            value = loaded.prepared(
                engine,
                lambda table: opendp_queries.prepare_polars(table, metadata),
                _polars_nbytes,
            )
        else:
            raise ValueError(f"unknown engine {engine!r}")
        if fresh:
            self._cache.refresh((dataset.name, dataset.version))
        return value


def _polars_nbytes(frame: pl.DataFrame) -> int:
    # Polars shares the Arrow buffers where it can; count its estimate anyway (an upper bound).
    return int(frame.estimated_size())


def _unsupported(query: object) -> InvalidQuery:
    return InvalidQuery(f"unsupported query kind: {type(query).__name__}")


def _check_delta(cost: PrivacyLoss, metadata: DatasetMetadata) -> None:
    """Refuse a charge whose delta no longer means privacy on this dataset."""
    delta = cost.components().get("delta", Decimal(0))
    if delta > metadata.max_delta:
        raise InvalidQuery(
            f"the query would be charged delta {format_decimal(delta)}, above this dataset's "
            f"maximum of {format_decimal(metadata.max_delta)}: ask with a smaller delta",
            reason="DELTA_TOO_LARGE",
            metadata={"maximum": format_decimal(metadata.max_delta)},
        )
