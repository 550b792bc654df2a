"""A small SQL layer shared by the stores (budget ledger, admin store): SQLite or PostgreSQL.

Stores write portable SQL with `?` placeholders and run it inside a transaction:

    db = Database.from_url("sqlite:///data/budget.db")   # or postgresql://user@host:5432/name
    with db.transaction() as tx:
        row = tx.fetchone("SELECT * FROM ledgers WHERE id = ?" + tx.lock_suffix, (ledger_id,))

`Database.run(fn)` runs `fn(tx)` in a transaction and re-runs it a few times when the database
says the transaction lost a race (deadlock, serialization failure, or a unique key that a
concurrent transaction inserted first), so code that checks before it inserts stays idempotent
under concurrency.

Concurrency model:

* **SQLite**: one connection per thread, WAL journal, a 30 s busy timeout. A write transaction
  starts with `BEGIN IMMEDIATE`, which takes the database write lock up front, so writers in any
  thread or process are serialised; a read transaction (`readonly=True`) reads one WAL snapshot.
* **PostgreSQL**: pooled connections (psycopg 3). A write transaction runs at READ COMMITTED and
  locks the rows it changes with `SELECT ... FOR UPDATE` (append `tx.lock_suffix` to such a
  SELECT); a read transaction runs at REPEATABLE READ, READ ONLY, so it sees one snapshot.

Decimals are stored as TEXT in SQLite and NUMERIC(38, 18) in PostgreSQL (`db.decimal_type` in DDL);
write them with `to_db_decimal` and read them with `from_db_decimal`, which is exact in both.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import psycopg
from psycopg import IsolationLevel
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from lomas_common.errors import BackendUnavailable
from lomas_common.privacy import format_decimal

log = logging.getLogger(__name__)

Dialect = Literal["sqlite", "postgresql"]
Row = dict[str, Any]
Params = Sequence[Any]
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
DEFAULT_ATTEMPTS = 5
_DECIMAL_TYPES: dict[Dialect, str] = {"sqlite": "TEXT", "postgresql": "NUMERIC(38, 18)"}
_SQLITE_UNIQUE_CODES = {
    sqlite3.SQLITE_CONSTRAINT_UNIQUE,
    sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY,
}


class UniqueViolation(Exception):
    """A statement hit a unique or primary key constraint (translated from the driver's error)."""


class Cursor(Protocol):
    """What `Transaction.execute` returns: the part of a DB-API cursor both drivers share."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def to_db_decimal(value: Decimal) -> str:
    """A decimal as a statement parameter: plain text, which SQLite keeps and PostgreSQL casts."""
    if not isinstance(value, Decimal):
        raise TypeError(f"expected a Decimal, got {type(value).__name__}")
    return format_decimal(value)


def from_db_decimal(value: object) -> Decimal:
    """A decimal read back from either database, exactly and without trailing zeros."""
    if isinstance(value, Decimal):
        return Decimal(format_decimal(value))
    if isinstance(value, str):
        return Decimal(format_decimal(Decimal(value)))
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    raise TypeError(f"expected a decimal column, got {type(value).__name__}")


def _sqlite_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


class Transaction:
    """One open transaction. Rows come back as `dict`s keyed by column name."""

    def __init__(self, dialect: Dialect, execute: Callable[[str, Params], Cursor]) -> None:
        self.dialect: Dialect = dialect
        self._execute = execute

    @property
    def lock_suffix(self) -> str:
        """Append to a SELECT that must lock its rows until commit ('' on SQLite: the
        transaction already holds the database write lock)."""
        return " FOR UPDATE" if self.dialect == "postgresql" else ""

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        if self.dialect == "postgresql":
            sql = sql.replace("%", "%%").replace("?", "%s")
        try:
            return self._execute(sql, tuple(params))
        except sqlite3.IntegrityError as error:
            if error.sqlite_errorcode in _SQLITE_UNIQUE_CODES:
                raise UniqueViolation(str(error)) from error
            raise
        except pg_errors.UniqueViolation as error:
            raise UniqueViolation(str(error)) from error

    def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = self.execute(sql, params).fetchone()
        return row

    def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return list(self.execute(sql, params).fetchall())


class _SqliteBackend:
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        path.parent.mkdir(parents=True, exist_ok=True)

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # isolation_level=None: no implicit transactions, we issue BEGIN/COMMIT ourselves.
            # check_same_thread=False only so close() may close every thread's connection;
            # each connection is still used by the one thread that opened it.
            connection = sqlite3.connect(
                self._path,
                timeout=SQLITE_BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
            connection.row_factory = _sqlite_row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextmanager
    def transaction(self, *, readonly: bool, pipelined: bool = False) -> Iterator[Transaction]:
        del pipelined  # SQLite runs in-process: there are no round trips to save
        connection = self._connection()
        connection.execute("BEGIN DEFERRED" if readonly else "BEGIN IMMEDIATE")
        try:
            yield Transaction("sqlite", connection.execute)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()


class _PostgresBackend:
    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, max_connections: int) -> None:
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "row_factory": dict_row},
            connection_class=psycopg.Connection[DictRow],
            open=True,
        )

    @contextmanager
    def transaction(self, *, readonly: bool, pipelined: bool = False) -> Iterator[Transaction]:
        with self._pool.connection() as connection:
            connection.isolation_level = (
                IsolationLevel.REPEATABLE_READ if readonly else IsolationLevel.READ_COMMITTED
            )
            connection.read_only = readonly
            if not pipelined:
                with connection.transaction():
                    yield Transaction("postgresql", connection.execute)
                return
            # Pipeline mode queues statements and sends them when a result is read, so BEGIN
            # travels with the first SELECT and the last writes with COMMIT: two round trips for
            # a read-then-write transaction instead of four. (psycopg's own `transaction()` adds
            # syncs of its own inside a pipeline, hence the explicit BEGIN and COMMIT.)
            try:
                with connection.pipeline():
                    connection.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                    yield Transaction("postgresql", connection.execute)
                    connection.execute("COMMIT")
            except BaseException as error:
                if connection.info.transaction_status != TransactionStatus.IDLE:
                    connection.rollback()
                if isinstance(error, pg_errors.UniqueViolation):
                    raise UniqueViolation(str(error)) from error
                raise

    def close(self) -> None:
        self._pool.close()


_RETRYABLE: tuple[type[Exception], ...] = (
    UniqueViolation,
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
)


class Database:
    """A SQLite file or a PostgreSQL database, opened from a URL."""

    def __init__(self, backend: _SqliteBackend | _PostgresBackend) -> None:
        self._backend = backend
        self.dialect: Dialect = backend.dialect

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 10) -> Database:
        """Open `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or
        `postgresql://user@host:port/dbname` (`max_connections` sizes the PostgreSQL pool)."""
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            if not path or path.startswith(":memory:"):
                raise ValueError("a SQLite database must be a file (sqlite:///path/to/file.db)")
            return cls(_SqliteBackend(Path(path)))
        if url.startswith(("postgresql://", "postgres://")):
            return cls(_PostgresBackend(url, max_connections=max_connections))
        raise ValueError("database URL must start with sqlite:/// or postgresql://")

    @property
    def decimal_type(self) -> str:
        """The column type for exact decimals in DDL."""
        return _DECIMAL_TYPES[self.dialect]

    @contextmanager
    def transaction(
        self, *, readonly: bool = False, pipelined: bool = False
    ) -> Iterator[Transaction]:
        """One transaction: committed when the block ends, rolled back if it raises.

        `pipelined=True` (PostgreSQL) batches statements until a result is read: use it only
        for write transactions where no code reads `rowcount` or expects a write's error before
        the next read.
        """
        if readonly and pipelined:
            raise ValueError("a pipelined transaction is a write transaction")
        try:
            with self._backend.transaction(readonly=readonly, pipelined=pipelined) as tx:
                yield tx
        except psycopg.OperationalError as error:
            # The server went away (a restart, a failover): the pool drops the dead connection,
            # and the caller retries (with its request id) once the server is back.
            log.warning("database unavailable: %s", error)
            raise BackendUnavailable(
                "the database is unavailable; retry later",
                peer="database",
                retry_after_seconds=1.0,
            ) from None

    def run(
        self,
        work: Callable[[Transaction], T],
        *,
        readonly: bool = False,
        pipelined: bool = False,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> T:
        """Run `work(tx)` in a transaction, re-running it (with jitter) when it lost a race.

        `work` must be safe to re-run: it may only touch the database through `tx`.
        """
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction(readonly=readonly, pipelined=pipelined) as tx:
                    return work(tx)
            except _RETRYABLE as error:
                if attempt == attempts:
                    raise
                log.debug("transaction attempt %d lost a race (%s); retrying", attempt, error)
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def apply_schema(self, statements: Sequence[str]) -> None:
        """Run idempotent DDL (`CREATE TABLE IF NOT EXISTS ...`) in one transaction."""

        def work(tx: Transaction) -> None:
            if self.dialect == "postgresql":
                # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs.
                tx.execute("SELECT pg_advisory_xact_lock(?)", (7_265_801,))
            for statement in statements:
                tx.execute(statement)

        self.run(work)

    def close(self) -> None:
        self._backend.close()
