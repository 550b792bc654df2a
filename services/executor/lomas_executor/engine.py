"""The executor's facade: what the gRPC servicer and the Celery worker call.

`QueryEngine` dispatches on the query's type (only `SmartnoiseSqlQuery` today; OpenDP and others add
a `case`), loads datasets through the byte-bounded cache, and keeps the phases honest:

* `estimate_cost`, `dummy_frame` and `run_dummy` never touch the real data;
* `run` validates the query before loading anything, so an invalid query fails with QUERY_INVALID
  and no data access; after loading, failures are QUERY_EXECUTION_FAILED without data values.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lomas_common.errors import InvalidQuery
from lomas_common.privacy import PrivacyLoss
from lomas_executor import smartnoise_sql
from lomas_executor.cache import DatasetCache, LoadedDataset
from lomas_executor.dummy import make_dummy_frame
from lomas_executor.metadata import DatasetMetadata
from lomas_executor.smartnoise_sql import SmartnoiseSqlQuery
from lomas_executor.sources import DataFormat, DataSource, load_table

# Every query kind the engine runs. Add new dataclasses here and a `case` in each dispatch below.
Query = SmartnoiseSqlQuery


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """Everything the executor needs to know about one version of a dataset."""

    name: str
    version: int
    source: DataSource
    fmt: DataFormat
    metadata: DatasetMetadata


class QueryEngine:
    def __init__(self, cache: DatasetCache) -> None:
        self._cache = cache

    def estimate_cost(self, query: Query, dataset: DatasetRef) -> PrivacyLoss:
        """The privacy loss `query` will be charged (rounded up); validates it; no data access."""
        match query:
            case SmartnoiseSqlQuery():
                return smartnoise_sql.estimate_cost(query, dataset.metadata)
            case _:
                raise _unsupported(query)

    def dummy_frame(self, dataset: DatasetRef, rows: int, seed: int) -> pd.DataFrame:
        """Seeded dummy data following the dataset's metadata."""
        return make_dummy_frame(dataset.metadata, rows, seed)

    def run_dummy(self, query: Query, dataset: DatasetRef, rows: int, seed: int) -> pd.DataFrame:
        """Run `query` on seeded dummy data (free: the caller reports the real cost separately)."""
        match query:
            case SmartnoiseSqlQuery():
                smartnoise_sql.estimate_cost(query, dataset.metadata)  # validate before building
                frame = make_dummy_frame(dataset.metadata, rows, seed)
                prepared = smartnoise_sql.prepare_reader(frame, dataset.metadata)
                return smartnoise_sql.execute(query, prepared, dataset.metadata, validated=True)
            case _:
                raise _unsupported(query)

    def run(self, query: Query, dataset: DatasetRef) -> pd.DataFrame:
        """Run `query` on the real data and return its DP release."""
        match query:
            case SmartnoiseSqlQuery():
                smartnoise_sql.estimate_cost(query, dataset.metadata)  # fail before loading data
                loaded = self.load(dataset)
                return smartnoise_sql.execute(
                    query, loaded.sql_reader, dataset.metadata, validated=True
                )
            case _:
                raise _unsupported(query)

    def load(self, dataset: DatasetRef) -> LoadedDataset:
        """The dataset's table and prepared readers, from the cache or loaded once."""

        def load() -> LoadedDataset:
            table = load_table(dataset.source, dataset.fmt, schema=dataset.metadata.arrow_schema())
            reader = smartnoise_sql.prepare_reader(table, dataset.metadata)
            return LoadedDataset(table=table, sql_reader=reader)

        return self._cache.get_or_load((dataset.name, dataset.version), load)


def _unsupported(query: object) -> InvalidQuery:
    return InvalidQuery(f"unsupported query kind: {type(query).__name__}")
