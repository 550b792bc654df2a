"""Differentially private SQL with smartnoise-sql: validation, true cost, execution.

Three phases, kept apart so that errors are honest about data access:

1. **Validate and cost** (`estimate_cost`): parse and rewrite the SQL against the metadata alone.
   The reader used here cannot read data at all (`_MetadataOnlyReader`), so this is free and its
   error messages (about the SQL text and the schema) are safe to return as QUERY_INVALID.
2. **Prepare** (`prepare_reader`): copy a table into an in-memory SQLite database once per dataset
   version (`SqliteTableReader`); the executor caches it.
3. **Execute** (`execute`): validate again (phase 1, cheap), then run on the prepared reader
   through a fresh `PrivateReader`. A failure in this phase has touched data: it becomes
   QUERY_EXECUTION_FAILED with a generic message, because the library's text could quote row values.

The cost is what the library will really charge (`PrivateReader.get_privacy_cost`): smartnoise-sql
spends the query's epsilon once per mechanism, so `SELECT AVG(x)` costs 2 epsilon (SUM and COUNT).

Speed: each Laplace/Gaussian mechanism searches its noise scale with OpenDP's `binary_search_param`
(~20 ms each, for every cost and every execution). The scale is a pure function of the mechanism's
inputs, so this module memoises it (see `NoiseScaleMemo`, installed once at import).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from snsql import Mechanism, Privacy, Stat
from snsql.metadata import Metadata
from snsql.sql._mechanisms.gaussian import Gaussian
from snsql.sql._mechanisms.laplace import Laplace
from snsql.sql.private_reader import PrivateReader
from snsql.sql.reader.base import SqlReader
from snsql.sql.reader.pandas import PandasReader
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from lomas_common.errors import ExecutionFailed, FailedPrecondition, InvalidQuery
from lomas_common.privacy import PrivacyLoss, PrivacyValueError, parse_decimal
from lomas_executor.failures import chain_names
from lomas_executor.metadata import TABLE_NAME, DatasetMetadata

_log = logging.getLogger(__name__)

MAX_SQL_LENGTH = 100_000
MAX_MESSAGE_LENGTH = 500
STAT_NAMES = tuple(stat.name for stat in Stat)
MECHANISM_NAMES = tuple(mechanism.name for mechanism in Mechanism)


# -- the query -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmartnoiseSqlQuery:
    """A smartnoise-sql query as Lomas takes it. The SQL reads from the table `df`.

    `epsilon`/`delta` are smartnoise-sql's per-mechanism parameters (not the total cost: see
    `estimate_cost`). `mechanisms` overrides the mechanism per statistic, e.g. `{"count":
    "gaussian"}` (statistics: count, sum_int, sum_large_int, sum_float, sum_large_float, threshold;
    mechanisms: laplace, geometric, gaussian, discrete_laplace). `postprocess=False` returns the
    noisy aggregates before post-processing (no clamping, HAVING, ORDER BY, LIMIT), in columns
    res_0, res_1, ...
    """

    sql: str
    epsilon: Decimal
    delta: Decimal
    mechanisms: Mapping[str, str] = field(default_factory=dict)
    postprocess: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.sql, str) or not self.sql.strip():
            raise InvalidQuery("the SQL query is empty")
        if len(self.sql) > MAX_SQL_LENGTH:
            raise InvalidQuery(f"the SQL query is longer than {MAX_SQL_LENGTH} characters")
        for name in ("epsilon", "delta"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite():
                raise InvalidQuery(f"{name} must be a finite decimal")
        if self.epsilon <= 0:
            raise InvalidQuery("epsilon must be greater than 0")
        if not 0 <= self.delta < 1:
            raise InvalidQuery("delta must be at least 0 and less than 1")
        for stat, mechanism in self.mechanisms.items():
            if stat not in STAT_NAMES:
                raise InvalidQuery(
                    f"unknown statistic {stat!r} in mechanisms (expected one of "
                    f"{', '.join(STAT_NAMES)})"
                )
            if mechanism not in MECHANISM_NAMES:
                raise InvalidQuery(
                    f"unknown mechanism {mechanism!r} for {stat} (expected one of "
                    f"{', '.join(MECHANISM_NAMES)})"
                )
        object.__setattr__(self, "mechanisms", MappingProxyType(dict(self.mechanisms)))

    def privacy(self) -> Privacy:
        """smartnoise-sql's privacy parameters for this query (a fresh object: it is mutable)."""
        privacy = Privacy(epsilon=float(self.epsilon), delta=float(self.delta))
        for stat, mechanism in self.mechanisms.items():
            privacy.mechanisms.map[Stat[stat]] = Mechanism[mechanism]
        return privacy


# -- readers ---------------------------------------------------------------------------------------


class _MetadataOnlyReader(SqlReader):
    """A reader with the pandas engine's naming rules and no data: costing cannot read rows."""

    def __init__(self) -> None:
        super().__init__(PandasReader.ENGINE)

    def execute(self, query: str, *ignore: object, accuracy: bool = False) -> list[Any]:
        raise RuntimeError("the metadata-only reader holds no data")


class SqliteTableReader(PandasReader):
    """smartnoise-sql's PandasReader over an in-memory SQLite copy that every thread can query.

    The stock PandasReader keeps its copy in a `sqlite://` memory database behind SQLAlchemy's
    per-thread pool, so another thread sees an empty database ("no such table: df"). This one puts
    the table in SQLite's `memdb` VFS under a unique name: each query opens its own connection
    (NullPool, ~70 us), connections in any thread see the same data, and readers run concurrently. A
    keeper connection holds the database alive as long as this object lives.

    Build it once per dataset version (copying costs ~6.5 s per million rows) and share it.
    """

    def __init__(self, frame: pd.DataFrame, metadata: DatasetMetadata) -> None:
        SqlReader.__init__(self, PandasReader.ENGINE)
        missing = [name for name in metadata.column_names if name not in frame.columns]
        if missing:
            raise FailedPrecondition(
                f"the dataset's data lacks column(s) named in its metadata: {', '.join(missing)}"
            )
        self.metadata = smartnoise_metadata(metadata)
        self.table_names = [TABLE_NAME]
        uri = f"file:/lomas-{uuid.uuid4().hex}?vfs=memdb"
        keeper = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self.db_engine = create_engine(f"sqlite:///{uri}&uri=true", poolclass=NullPool)
        weakref.finalize(self, keeper.close)
        frame[list(metadata.column_names)].to_sql(TABLE_NAME, self.db_engine, index=False)
        page_count = keeper.execute("PRAGMA page_count").fetchone()[0]
        page_size = keeper.execute("PRAGMA page_size").fetchone()[0]
        self.nbytes: int = int(page_count) * int(page_size)


def prepare_reader(data: pd.DataFrame | pa.Table, metadata: DatasetMetadata) -> SqliteTableReader:
    """The reusable reader for one dataset version (copies the data into SQLite once)."""
    if isinstance(data, pa.Table):
        data = data.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return SqliteTableReader(data, metadata)


# -- cost ------------------------------------------------------------------------------------------


def estimate_cost(query: SmartnoiseSqlQuery, metadata: DatasetMetadata) -> PrivacyLoss:
    """The privacy loss smartnoise-sql will charge for this query, as (epsilon, delta) rounded up.

    No data access. Raises InvalidQuery for anything the library refuses (parse errors, unsupported
    aggregates, unknown columns or tables, noise scale too large) and for aggregates of unbounded
    columns.

    Memoised: the answer is a function of the query's SQL and privacy parameters and of the
    metadata alone, and working it out (parsing and rewriting the SQL) takes milliseconds, for
    every estimate and again before every run. Refusals are not memoised.
    """
    mechanisms = tuple(sorted(query.mechanisms.items()))
    return _cost(query.sql, query.epsilon, query.delta, mechanisms, metadata)


@functools.lru_cache(maxsize=1024)
def _cost(
    sql: str,
    epsilon: Decimal,
    delta: Decimal,
    mechanisms: tuple[tuple[str, str], ...],
    metadata: DatasetMetadata,
) -> PrivacyLoss:
    query = SmartnoiseSqlQuery(sql, epsilon, delta, dict(mechanisms))
    private = _private_reader(query, _MetadataOnlyReader(), metadata)
    try:
        epsilon, delta = private.get_privacy_cost(query.sql)
        if metadata.unbounded_numeric_columns():
            _refuse_unbounded(private, query.sql, metadata)
    except InvalidQuery:
        raise
    except Exception as exc:
        # The library raises bare ValueErrors (and worse) for bad queries; no data was read.
        raise InvalidQuery(_clean_message(exc)) from None
    try:
        loss = PrivacyLoss.approx_dp(
            parse_decimal(float(epsilon), name="epsilon"),
            parse_decimal(float(delta), name="delta"),
        )
    except PrivacyValueError as exc:
        raise InvalidQuery(f"the query's privacy cost is out of range: {exc}") from None
    return loss.as_cost()


def _refuse_unbounded(private: PrivateReader, sql: str, metadata: DatasetMetadata) -> None:
    """smartnoise-sql prices sums of unbounded columns, then refuses them after reading the data."""
    subquery, _ = private._rewrite(sql)
    if any(
        symbol.mechanism is not None and symbol.mechanism.sensitivity is np.inf
        for symbol in subquery._select_symbols
    ):
        raise InvalidQuery(
            "the query aggregates a column without bounds in the metadata (only COUNT is possible "
            f"on: {', '.join(metadata.unbounded_numeric_columns())})"
        )


# -- execution -------------------------------------------------------------------------------------


def execute(
    query: SmartnoiseSqlQuery,
    prepared: SqliteTableReader,
    metadata: DatasetMetadata,
    *,
    validated: bool = False,
) -> pd.DataFrame:
    """Run the query on prepared data and return the DP release.

    Validates first (InvalidQuery, nothing read) unless the caller says `estimate_cost` already
    accepted this query for this metadata. Once data is read, any failure is ExecutionFailed with a
    message that names only the exception class.
    """
    if not validated:
        estimate_cost(query, metadata)
    private = _private_reader(query, prepared, metadata)
    try:
        result = private.execute(query.sql, postprocess=query.postprocess)
        if not query.postprocess:
            rows = [list(row) for row in result]
            width = len(rows[0]) if rows else 0
            return pd.DataFrame(rows, columns=[f"res_{i}" for i in range(width)])
        return pd.DataFrame(result[1:], columns=result[0])
    except Exception as exc:
        # Data was read: whatever failed, report only the exception class (logs keep the details).
        _log.warning("smartnoise-sql failed after reading data (%s)", chain_names(exc))
        raise ExecutionFailed(
            f"smartnoise-sql failed while running the query ({type(exc).__name__})"
        ) from None


def _private_reader(
    query: SmartnoiseSqlQuery, reader: SqlReader, metadata: DatasetMetadata
) -> PrivateReader:
    # Cheap (~0.01 ms): a fresh one per query, so no state leaks between queries. The parsed
    # metadata is shared: smartnoise-sql only reads it, and parsing costs ~1.2 ms per query.
    return PrivateReader(reader, smartnoise_metadata(metadata), privacy=query.privacy())


@functools.lru_cache(maxsize=256)
def smartnoise_metadata(metadata: DatasetMetadata) -> Metadata:
    """smartnoise-sql's parsed form of a dataset's metadata, once per distinct metadata."""
    return Metadata.from_dict(metadata.to_smartnoise())


def _clean_message(exc: Exception) -> str:
    """The first line of a library error (later lines carry OpenDP internals), bounded in length."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if not isinstance(exc, ValueError) or not text:
        text = f"smartnoise-sql could not analyse the query ({type(exc).__name__})"
    if len(text) > MAX_MESSAGE_LENGTH:
        text = text[: MAX_MESSAGE_LENGTH - 3] + "..."
    return text


# -- noise-scale memoisation -----------------------------------------------------------------------


class NoiseScaleMemo:
    """A bounded, thread-safe LRU of noise scales found by smartnoise-sql's binary searches.

    `Laplace._compute_noise_scale` and `Gaussian._compute_noise_scale` search, with OpenDP, the
    smallest scale that meets (epsilon[, delta]) for a clamped sum over bounds (lower, upper) with
    `max_contrib` contributions. Their result depends only on the mechanism class and those inputs
    (plus the bit depth for Gaussian), all of which form the key, each with its Python type so that
    1 and 1.0 stay distinct keys. Failures are not memoised. On a hit the Gaussian search's side
    effect `set_default_int_type(bit_depth)` is skipped: `release` and `accuracy` set it again
    themselves.
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._scales: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(mechanism: Any) -> Hashable:
        inputs = (
            mechanism.epsilon,
            mechanism.delta,
            mechanism.lower,
            mechanism.upper,
            mechanism.max_contrib,
            mechanism.bit_depth,
        )
        return (type(mechanism), *((type(value), value) for value in inputs))

    def wrap(self, search: Callable[[Any], None]) -> Callable[[Any], None]:
        def compute_noise_scale(mechanism: Any) -> None:
            if mechanism.scale is not None:
                return
            key = self.key(mechanism)
            with self._lock:
                scale = self._scales.get(key)
                if scale is not None:
                    self._scales.move_to_end(key)
                    self.hits += 1
            if scale is not None:
                mechanism.scale = scale
                return
            search(mechanism)  # outside the lock: concurrent misses may both search (same result)
            found = _scale_of(mechanism)
            with self._lock:
                self.misses += 1
                self._scales[key] = found
                self._scales.move_to_end(key)
                while len(self._scales) > self._maxsize:
                    self._scales.popitem(last=False)

        compute_noise_scale.__wrapped__ = search  # type: ignore[attr-defined]
        compute_noise_scale.__doc__ = f"Memoised by lomas_executor: {search.__doc__ or ''}"
        return compute_noise_scale

    def clear(self) -> None:
        with self._lock:
            self._scales.clear()
            self.hits = 0
            self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._scales)


def _scale_of(mechanism: Any) -> float:
    # A function, so the type checker does not keep `scale` narrowed to None across the search.
    return float(mechanism.scale)


NOISE_SCALE_MEMO = NoiseScaleMemo(maxsize=4096)


def _install_noise_scale_memo() -> None:
    """Route both mechanisms' searches through the memo, once per process (idempotent)."""
    for mechanism_class in (Laplace, Gaussian):
        search = mechanism_class.__dict__["_compute_noise_scale"]
        if getattr(search, "__wrapped__", None) is not None:
            continue
        mechanism_class._compute_noise_scale = NOISE_SCALE_MEMO.wrap(search)  # type: ignore[method-assign]


_install_noise_scale_memo()
