"""Differentially private SQL with smartnoise-sql: validation, true cost, execution.

Three phases, kept apart so that errors are honest about data access:

1. **Validate and cost** (`estimate_cost`), free and before any charge:
   * size ceilings on the text, before parsing (`sql_limits.check_sql_text`);
   * parse and rewrite the SQL against the metadata alone, with a reader that cannot read data at
     all (`_MetadataOnlyReader`); the library's messages (about the SQL text and the schema) are
     safe to return as QUERY_INVALID;
   * the privacy boundary of group keys (`sql_limits.plan_group_keys`): without `censor_dims`,
     every GROUP BY key must be a column with a public key set;
   * a dry run of the very engine the worker uses (`PrivateReader` over `SqliteTableReader`) on an
     EMPTY table with the dataset's schema, so that SQL the engine cannot execute is refused here,
     not after the data is read. Its messages cannot quote data: there is none.
2. **Prepare** (`prepare_reader`): copy a table into an in-memory SQLite database once per dataset
   version (`SqliteTableReader`); the executor caches it.
3. **Execute** (`execute`): validate again (phase 1, memoised), then run on the prepared reader
   through a fresh `_LomasPrivateReader`. A failure in this phase has touched data: it becomes
   QUERY_EXECUTION_FAILED with a generic message, because the library's text could quote row values.

Parse and rewrite once: phase 1 rewrites the SQL's canonical form (`canonical`) as the library's run
would (`_Analysis`); the dry run and later runs execute that rewritten query, with the very mechanisms
that were priced, instead of parsing and rewriting again (two thirds of a small query's run). A run
only reads it, mechanisms draw fresh noise at each release, and a run that finds it held by another
parses its own copy.

Group keys: with public categories, the exact aggregates are completed before noise with a zero row
for every declared key combination the data lacks (see `sql_limits`), so the key set of a release
is the declared one, whatever the data.

Mechanisms: smartnoise-sql runs one mechanism per noisy column (`SELECT AVG(x)` runs a SUM and a
COUNT), each with the query's (epsilon, delta) as floats, rounded DOWN from the user's decimals so
that it never runs with more than the user asked for. The mechanisms are Lomas' own
(`smartnoise_mechanisms`): each runs the noise its name says, releases integer statistics as
unbiased integers, and reports the privacy loss it spends from OpenDP's privacy maps.

The charge, basic composition, exactly: the sum over the mechanisms that will run of the loss each
one spends (`smartnoise_mechanisms.spent`): its epsilon, delta only for Gaussian noise, and the
query's delta once more for the threshold of `censor_dims` where it hides groups (with GROUP BY).
A pure Laplace COUNT(*) spends no delta, whatever delta the query passes. Each float is rounded up
to `ENGINE_COST_DIGITS` significant digits, never above the user's decimal when it is not above the
float passed in (the decimal is >= it), and the sum rounds up to the ledger quantum. Basic
composition is a valid (epsilon, delta) bound for the release, never below the epsilon of the
library's own odometer (which takes the minimum of basic and advanced composition).

Speed: each mechanism searches its noise scale with OpenDP's `binary_search_param` (~20 ms for
Laplace, more for Gaussian). The scale is a pure function of the mechanism's inputs, so it is
memoised (`smartnoise_mechanisms.CALIBRATIONS`).
"""

from __future__ import annotations

import functools
import logging
import math
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Context, Decimal
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from snsql import Mechanism, Privacy, Stat
from snsql._ast.ast import Query
from snsql.metadata import Metadata
from snsql.sql.parse import QueryParser
from snsql.sql.private_reader import PrivateReader
from snsql.sql.reader.base import SqlReader
from snsql.sql.reader.pandas import PandasReader
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from lomas_common.errors import ExecutionFailed, FailedPrecondition, InvalidQuery
from lomas_common.privacy import PrivacyLoss, PrivacyValueError, engine_cost, parse_decimal
from lomas_executor import smartnoise_mechanisms, smartnoise_memos
from lomas_executor.canonical import canonical_sql
from lomas_executor.failures import chain_names
from lomas_executor.metadata import TABLE_NAME, DatasetMetadata
from lomas_executor.settings import SqlLimits
from lomas_executor.sql_limits import (
    DEFAULT_LIMITS,
    CompletingReader,
    GroupKeyPlan,
    check_sql_text,
    plan_group_keys,
)

_log = logging.getLogger(__name__)

smartnoise_memos.install()

MAX_SQL_LENGTH = 100_000
MAX_MESSAGE_LENGTH = 500
STAT_NAMES = tuple(stat.name for stat in Stat)
MECHANISM_NAMES = tuple(mechanism.name for mechanism in Mechanism)
# Key combinations a dry run completes (enough to run every step of the engine on some rows).
DRY_RUN_KEY_ROWS = 16
# Sums of exact binary fractions: enough digits for any float, and inexact results round up.
_EXACT_SUM = Context(prec=1_000, rounding=ROUND_CEILING)


# -- the query -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmartnoiseSqlQuery:
    """A smartnoise-sql query as Lomas takes it. The SQL reads from the table `df`.

    `epsilon`/`delta` are smartnoise-sql's per-mechanism parameters (not the total cost: see
    `estimate_cost`). `mechanisms` overrides the mechanism per statistic, e.g. `{"count":
    "gaussian"}` (statistics: count, sum_int, sum_large_int, sum_float, sum_large_float, threshold;
    mechanisms: laplace, geometric, gaussian, discrete_laplace; which statistic takes which is
    `smartnoise_mechanisms.SUPPORTED_MECHANISMS`). `postprocess=False` returns the
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
            smartnoise_mechanisms.check_choice(stat, mechanism)
        object.__setattr__(self, "mechanisms", MappingProxyType(dict(self.mechanisms)))

    def privacy(self) -> Privacy:
        """smartnoise-sql's privacy parameters for this query (a fresh object: it is mutable).

        The floats are never above the decimals (see `float_at_most`); the mechanisms are Lomas' own.
        """
        return Privacy(
            epsilon=float_at_most(self.epsilon),
            delta=float_at_most(self.delta),
            mechanisms=smartnoise_mechanisms.MechanismChoice(self.mechanisms),
        )


def float_at_most(value: Decimal) -> float:
    """The largest float not above `value` (>= 0): `float()` rounds to nearest, sometimes up."""
    nearest = float(value)
    if Decimal(nearest) > value:
        return math.nextafter(nearest, 0.0)
    return nearest


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
    keeper connection holds the database alive as long as this object lives. Queries go to sqlite3
    directly: through SQLAlchemy they took three times as long (0.25 ms for a COUNT).

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
        uri = self._uri = f"file:/lomas-{uuid.uuid4().hex}?vfs=memdb"
        keeper = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self.db_engine = create_engine(f"sqlite:///{uri}&uri=true", poolclass=NullPool)
        weakref.finalize(self, keeper.close)
        frame[list(metadata.column_names)].to_sql(TABLE_NAME, self.db_engine, index=False)
        page_count = keeper.execute("PRAGMA page_count").fetchone()[0]
        page_size = keeper.execute("PRAGMA page_size").fetchone()[0]
        self.nbytes: int = int(page_count) * int(page_size)

    def execute(self, query: str, *ignore: object, accuracy: bool = False) -> list[Any]:
        """The stock reader's result (a row of column names, then the rows), from sqlite3."""
        if not isinstance(query, str):
            raise ValueError("Please pass strings to execute.")
        connection = sqlite3.connect(self._uri, uri=True)
        try:
            cursor = connection.execute(query)
            return [tuple(column[0] for column in cursor.description), *cursor.fetchall()]
        finally:
            connection.close()


def warm_up() -> None:
    """Parse one query, so the parser's lazily built tables exist (the first parse in a process takes
    about 15 ms; later ones reuse them). Called before a worker forks its children."""
    QueryParser().query(f"SELECT COUNT(*) AS n FROM {TABLE_NAME} WHERE x > 1 GROUP BY y")


def prepare_reader(data: pd.DataFrame | pa.Table, metadata: DatasetMetadata) -> SqliteTableReader:
    """The reusable reader for one dataset version (copies the data into SQLite once)."""
    if isinstance(data, pa.Table):
        data = data.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return SqliteTableReader(data, metadata)


# -- cost ------------------------------------------------------------------------------------------


def estimate_cost(
    query: SmartnoiseSqlQuery,
    metadata: DatasetMetadata,
    limits: SqlLimits = DEFAULT_LIMITS,
    *,
    dry_run: bool = True,
) -> PrivacyLoss:
    """The privacy loss this query is charged: basic composition of the mechanisms smartnoise-sql
    will run, as exact (epsilon, delta) decimals rounded up (see the module docstring).

    No data access. Raises InvalidQuery (or a subclass: QueryLimitExceeded, GroupKeysNotPublic) for
    anything beyond the size ceilings, anything the library refuses (parse errors, unsupported
    aggregates, unknown columns or tables, noise scale too large), aggregates of unbounded columns,
    group keys that are not public, and SQL the engine cannot execute on the dataset's schema.

    `dry_run=False` leaves out the run on an empty table, which refuses SQL the engine cannot
    execute: the worker, which prices a query again only to check the reservation, skips it (the
    executor dry-ran the query before it was priced for the reservation).

    Memoised: the answer is a function of the query's SQL and privacy parameters, of the metadata
    and of the limits alone, and working it out (parsing, rewriting, a dry run) takes
    milliseconds, for every estimate and again before every run. Refusals are not memoised.
    """
    return _priced(query, metadata, limits, dry_run).loss


def canonical_text(
    query: SmartnoiseSqlQuery, metadata: DatasetMetadata, limits: SqlLimits = DEFAULT_LIMITS
) -> str:
    """The query's SQL as smartnoise-sql's parser reads it (see `canonical.canonical_sql`), worked
    out with its cost, so the SQL is parsed once for both. Raises what `estimate_cost` raises."""
    return _priced(query, metadata, limits, dry_run=True).canonical


@dataclass(eq=False)
class _Analysis:
    """A query parsed and rewritten once (phase 1): its cost, and what its runs reuse (`_release`
    holds `lock`). The rewrite's select symbols hold the mechanisms the cost comes from."""

    loss: PrivacyLoss
    canonical: str
    parsed: Query
    subquery: Query
    rewritten: Query
    group_keys: GroupKeyPlan | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    dry_run_passed: bool = False  # set once `_dry_run` accepted it


def _priced(
    query: SmartnoiseSqlQuery, metadata: DatasetMetadata, limits: SqlLimits, dry_run: bool
) -> _Analysis:
    mechanisms = tuple(sorted(query.mechanisms.items()))
    args = (query.sql, query.epsilon, query.delta, mechanisms, query.postprocess, metadata, limits)
    analysis = _analysed(*args)
    if dry_run and not analysis.dry_run_passed:
        _dry_run(query, metadata, limits, analysis)  # refusals are not memoised
        analysis.dry_run_passed = True
    return analysis


@functools.lru_cache(maxsize=1024)
def _analysed(
    sql: str,
    epsilon: Decimal,
    delta: Decimal,
    mechanisms: tuple[tuple[str, str], ...],
    postprocess: bool,
    metadata: DatasetMetadata,
    limits: SqlLimits,
) -> _Analysis:
    check_sql_text(sql, limits)  # before the parser sees it
    query = SmartnoiseSqlQuery(sql, epsilon, delta, dict(mechanisms), postprocess)
    private = metadata_only_reader(query, metadata, limits)
    try:
        # `PrivateReader._get_mechanism_costs` without parsing twice: the subquery is needed too.
        parsed = private.parse_query_string(query.sql)
        canonical = canonical_sql(parsed)
        subquery, rewritten = private.rewrite_as_run(parsed)
        if metadata.unbounded_numeric_columns():
            _refuse_unbounded(subquery, metadata)
        costs = smartnoise_mechanisms.spent(
            private._get_mechanisms(subquery),
            key_count=private._get_keycount_position(subquery) if subquery.censor_dims else None,
            grouped=subquery.agg is not None,
        )
        group_keys = plan_group_keys(subquery, metadata, limits)
    except InvalidQuery:
        raise
    except Exception as exc:
        # The library raises bare ValueErrors (and worse) for bad queries; no data was read.
        raise refusal(exc, query) from None
    loss = _basic_composition(costs, query)
    return _Analysis(loss, canonical, parsed, subquery, rewritten, group_keys)


def metadata_only_reader(
    query: SmartnoiseSqlQuery, metadata: DatasetMetadata, limits: SqlLimits = DEFAULT_LIMITS
) -> _LomasPrivateReader:
    """A private reader for `query` that holds no data: for what the metadata alone answers."""
    return _private_reader(query, _MetadataOnlyReader(), metadata, limits)


def refusal(exc: Exception, query: SmartnoiseSqlQuery) -> InvalidQuery:
    """The library's refusal as an InvalidQuery; a mechanism that needs delta > 0, asked with
    delta 0, says so with its own reason."""
    message = _clean_message(exc)
    if query.delta == 0 and "delta" in message.lower():
        return InvalidQuery(
            f"this query needs delta > 0 (a mechanism it uses spends delta): {message}",
            reason="DELTA_REQUIRED",
        )
    return InvalidQuery(message)


def _basic_composition(costs: list[tuple[float, float]], query: SmartnoiseSqlQuery) -> PrivacyLoss:
    """The exact sum of the mechanisms' (epsilon, delta), rounded up to the ledger quantum; each
    float rounded up to `ENGINE_COST_DIGITS` significant digits (`engine_cost`), and never above
    the user's decimal when it is not above the float passed in."""
    passed_epsilon = float_at_most(query.epsilon)
    passed_delta = float_at_most(query.delta)

    def exact(value: float, passed: float, decimal: Decimal) -> Decimal:
        cost = engine_cost(float(value), name="cost")
        # The user's decimal is never below the float we passed in, so it bounds such a loss too.
        return min(cost, decimal) if value <= passed else cost

    epsilon = delta = Decimal(0)
    try:
        for mechanism_epsilon, mechanism_delta in costs:
            epsilon = _EXACT_SUM.add(
                epsilon, exact(mechanism_epsilon, passed_epsilon, query.epsilon)
            )
            delta = _EXACT_SUM.add(delta, exact(mechanism_delta, passed_delta, query.delta))
        loss = PrivacyLoss.approx_dp(
            parse_decimal(epsilon, name="epsilon"), parse_decimal(delta, name="delta")
        )
    except PrivacyValueError as exc:
        raise InvalidQuery(f"the query's privacy cost is out of range: {exc}") from None
    return loss.as_cost()


def _refuse_unbounded(subquery: Any, metadata: DatasetMetadata) -> None:
    """smartnoise-sql prices sums of unbounded columns, then refuses them after reading the data."""
    if any(
        symbol.mechanism is not None and symbol.mechanism.sensitivity is np.inf
        for symbol in subquery._select_symbols
    ):
        raise InvalidQuery(
            "the query aggregates a column without bounds in the metadata (only COUNT is possible "
            f"on: {', '.join(metadata.unbounded_numeric_columns())})"
        )


def _dry_run(
    query: SmartnoiseSqlQuery, metadata: DatasetMetadata, limits: SqlLimits, analysis: _Analysis
) -> None:
    """Run the query, as the worker will, on an empty table of the dataset's schema.

    What fails here (SQL that SQLite refuses, post-processing that cannot evaluate) would fail after
    the data is read; here it is refused for free, and the library's text can only quote the query
    and the metadata (the table is empty), so its first line is returned. It completes only the
    first `DRY_RUN_KEY_ROWS` key combinations: every row of an empty table is a filler row, so more
    would only draw more noise (10,000 rows take seconds).
    """
    private = _private_reader(query, _empty_reader(metadata), metadata, limits, DRY_RUN_KEY_ROWS)
    try:
        _release(private, query, analysis)
    except InvalidQuery:
        raise
    except Exception as exc:
        message = _clean_message(exc, "the query cannot be executed", any_class=True)
        raise InvalidQuery(f"the query cannot be executed on this dataset: {message}") from None


@functools.lru_cache(maxsize=64)
def _empty_reader(metadata: DatasetMetadata) -> SqliteTableReader:
    """The engine's reader over an empty table with the dataset's columns, once per metadata.

    Built from pandas alone: Arrow's first allocation reserves about 1 GB of address space, which
    a free call's address-space limit cannot spare.
    """
    frame = pd.DataFrame(
        {
            name: pd.Series([], dtype=_EMPTY_DTYPES[metadata.column_type(name)])
            for name in metadata.column_names
        }
    )
    return SqliteTableReader(frame, metadata)


# The pandas types of a loaded table's columns (`prepare_reader`), for the dry run's empty table.
_EMPTY_DTYPES = {
    "int": "Int64",
    "float": "float64",
    "string": "object",
    "boolean": "bool",
    "datetime": "datetime64[us]",
}


# -- execution -------------------------------------------------------------------------------------


def execute(
    query: SmartnoiseSqlQuery,
    prepared: SqliteTableReader,
    metadata: DatasetMetadata,
    *,
    validated: bool = False,
    limits: SqlLimits = DEFAULT_LIMITS,
) -> pd.DataFrame:
    """Run the query on prepared data and return the DP release.

    Validates first (InvalidQuery, nothing read) unless the caller says `estimate_cost` already
    accepted this query for this metadata. Once data is read, any failure is ExecutionFailed with a
    message that names only the exception class.
    """
    if not validated:
        estimate_cost(query, metadata, limits)
    analysis = _priced(query, metadata, limits, dry_run=False)  # memoised: nothing is parsed again
    private = _private_reader(query, prepared, metadata, limits)
    try:
        return _release(private, query, analysis)
    except Exception as exc:
        # Data was read: whatever failed, report only the exception class (logs keep the details).
        _log.warning("smartnoise-sql failed after reading data (%s)", chain_names(exc))
        raise ExecutionFailed(
            f"smartnoise-sql failed while running the query ({type(exc).__name__})"
        ) from None


def _release(
    private: _LomasPrivateReader, query: SmartnoiseSqlQuery, analysis: _Analysis
) -> pd.DataFrame:
    """The library's release as a frame (the one code path of real, dummy and dry runs): the run
    of `analysis`'s rewritten query, or of a new parse of its canonical SQL when another run
    holds it."""
    if not analysis.lock.acquire(blocking=False):
        return _as_frame(private.execute(analysis.canonical, postprocess=query.postprocess), query)
    try:
        private.analysis = analysis
        # Converted under the lock: without post-processing the library returns a lazy iterator.
        return _as_frame(
            private._execute_ast(analysis.parsed, postprocess=query.postprocess), query
        )
    finally:
        private.analysis = None
        analysis.lock.release()


def _as_frame(result: Any, query: SmartnoiseSqlQuery) -> pd.DataFrame:
    if not query.postprocess:
        rows = [list(row) for row in result]
        width = len(rows[0]) if rows else 0
        return pd.DataFrame(rows, columns=[f"res_{i}" for i in range(width)])
    return pd.DataFrame(result[1:], columns=result[0])


class _LomasPrivateReader(PrivateReader):
    """smartnoise-sql's PrivateReader, whose exact aggregates are completed over public keys.

    `PrivateReader._execute_ast` gets the exact aggregates from `_get_reader(subquery)`; this one
    wraps the reader so that, without `censor_dims`, the rows cover every declared key combination
    (`sql_limits.complete_aggregates`) before noise is added. (The library's other use of the hook,
    DPSU, is refused by the metadata.)
    """

    def __init__(
        self,
        reader: SqlReader,
        metadata: DatasetMetadata,
        privacy: Privacy,
        limits: SqlLimits,
        max_key_rows: int | None,
    ) -> None:
        super().__init__(reader, smartnoise_metadata(metadata), privacy=privacy)
        self._dataset_metadata = metadata
        self._limits = limits
        self._max_key_rows = max_key_rows
        self.analysis: _Analysis | None = None  # the analysis this run executes (`_release`)

    def rewrite_as_run(self, parsed: Query) -> tuple[Query, Query]:
        """The rewrite (subquery, query) that `_execute_ast(parsed)` runs: the same options, from
        the parsed query, then the library's rewrite."""
        self._options.row_privacy = parsed.row_privacy
        self._options.censor_dims = parsed.censor_dims
        self._options.reservoir_sample = parsed.sample_max_ids
        self._options.clamp_counts = parsed.clamp_counts
        self._options.use_dpsu = parsed.use_dpsu
        self._options.clamp_columns = parsed.clamp_columns
        self._refresh_options()
        subquery, rewritten = self._rewrite_ast(parsed)
        return subquery, rewritten

    def _rewrite_ast(self, query: Any) -> Any:
        analysis = self.analysis
        if analysis is None or query is not analysis.parsed:
            return super()._rewrite_ast(query)
        # What the library's rewrite sets besides its result, then the stored result.
        self._options.max_contrib = query.max_ids
        self._refresh_options()
        return analysis.subquery, analysis.rewritten

    def _get_reader(self, query_ast: Any) -> Any:
        analysis = self.analysis
        if analysis is not None and query_ast is analysis.subquery:
            plan = analysis.group_keys
        else:
            plan = plan_group_keys(query_ast, self._dataset_metadata, self._limits)
        if plan is None:
            return self.reader
        return CompletingReader(self.reader, plan, self._max_key_rows)


def _private_reader(
    query: SmartnoiseSqlQuery,
    reader: SqlReader,
    metadata: DatasetMetadata,
    limits: SqlLimits = DEFAULT_LIMITS,
    max_key_rows: int | None = None,
) -> _LomasPrivateReader:
    # Cheap (~0.01 ms): a fresh one per query, so no state leaks between queries. The parsed
    # metadata is shared: smartnoise-sql only reads it, and parsing costs ~1.2 ms per query.
    return _LomasPrivateReader(reader, metadata, query.privacy(), limits, max_key_rows)


@functools.lru_cache(maxsize=256)
def smartnoise_metadata(metadata: DatasetMetadata) -> Metadata:
    """smartnoise-sql's parsed form of a dataset's metadata, once per distinct metadata."""
    return Metadata.from_dict(metadata.to_smartnoise())


def _clean_message(
    exc: Exception,
    fallback: str = "smartnoise-sql could not analyse the query",
    *,
    any_class: bool = False,
) -> str:
    """The first line of a library error (later lines carry OpenDP internals), bounded in length.

    Only a ValueError's text is quoted (the library's refusals), unless `any_class`: errors of a
    run on an empty table (SQLite's, say) have no data to quote.
    """
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if not (any_class or isinstance(exc, ValueError)) or not text:
        text = f"{fallback} ({type(exc).__name__})"
    if len(text) > MAX_MESSAGE_LENGTH:
        text = text[: MAX_MESSAGE_LENGTH - 3] + "..."
    return text
