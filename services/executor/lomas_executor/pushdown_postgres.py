"""PostgreSQL datasets: SmartNoise-SQL's rewritten query runs in the database.

A PostgreSQL dataset is a table or view (`DataSource.postgres`: credentials name, schema, table).
The worker never loads it: smartnoise-sql's exact-aggregate subquery runs in PostgreSQL through a
`PushdownReader` (see `lomas_executor.pushdown_sql` for what may reach the database and how it is
checked), only its rows (one per group) come back, and the worker adds the noise.

Each query opens its own connection (a few milliseconds; nothing is shared between threads or
forked processes) with the named credentials of the workers' secrets, and sends one statement:

* in a READ ONLY transaction (`default_transaction_read_only`), with a statement timeout, and with
  `search_path` set to `pg_catalog` only, so no unqualified name resolves to a user's object;
* through the extended query protocol (binary results), which refuses more than one statement in
  one message, whatever the text holds.

The role in the credentials should be allowed to SELECT on the registered table only (GRANT
SELECT ON schema.table TO role, with no other privilege). The platform does not rely on it (what
is sent is checked), but a role that can read nothing else is the last fence.

Registration (`check_postgres_source`) connects, checks that the table exists and can be read by
the role, and that it has every column of the metadata with a type the metadata's type reads; no
row is read. OpenDP queries are refused on these datasets: OpenDP's engines run on data in the
worker's memory, which is exactly what a PostgreSQL dataset avoids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg

from lomas_common.errors import FailedPrecondition, InvalidMetadata
from lomas_executor.metadata import ColumnType, DatasetMetadata
from lomas_executor.pushdown_sql import PushdownReader, quote_name
from lomas_executor.sources import DataSource, PostgresCredentials, SourceSecrets

_log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10
STATEMENT_TIMEOUT_SECONDS = 600
APPLICATION_NAME = "lomas-worker"

# PostgreSQL types (pg_type.typname of the column, or of an array's or domain's base) that the
# engines read as each metadata type.
_READS_AS: dict[ColumnType, frozenset[str]] = {
    "int": frozenset({"int2", "int4", "int8"}),
    "float": frozenset({"int2", "int4", "int8", "float4", "float8", "numeric"}),
    "string": frozenset({"text", "varchar", "bpchar", "name"}),
    "boolean": frozenset({"bool"}),
    "datetime": frozenset({"timestamp", "timestamptz", "date"}),
}


@contextmanager
def connect(
    credentials: PostgresCredentials, *, statement_timeout_seconds: int = STATEMENT_TIMEOUT_SECONDS
) -> Iterator[psycopg.Connection[Any]]:
    """A read-only connection with a statement timeout (see the module docstring)."""
    options = (
        f"-c statement_timeout={int(statement_timeout_seconds * 1000)} "
        "-c default_transaction_read_only=on -c search_path=pg_catalog "
        "-c standard_conforming_strings=on"
    )
    with psycopg.connect(
        host=credentials.host,
        port=credentials.port,
        dbname=credentials.dbname,
        user=credentials.user,
        password=credentials.password or None,
        sslmode=credentials.sslmode,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name=APPLICATION_NAME,
        options=options,
    ) as connection:
        yield connection


def relation_of(source: DataSource) -> tuple[str, tuple[str, ...]]:
    """The registered table as SQL names it, and its quoted parts."""
    parts = (quote_name(source.schema), quote_name(source.table))
    return ".".join(parts), parts


def credentials_of(source: DataSource, secrets: SourceSecrets) -> PostgresCredentials:
    credentials = secrets.postgres.get(source.credentials_name)
    if credentials is None:
        raise FailedPrecondition(
            f"the executor has no PostgreSQL credentials named {source.credentials_name!r}",
            reason="DATASET_SOURCE_UNAVAILABLE",
        )
    return credentials


def run_sql(credentials: PostgresCredentials, sql: str) -> list[Any]:
    """Run one checked SELECT; a header row (column names), then the rows, with PostgreSQL's
    exact numerics as Python ints or floats (what smartnoise-sql's mechanisms take)."""
    with connect(credentials) as connection, connection.cursor() as cursor:
        # Binary results use the extended protocol: one statement per message, by the server's
        # rule. The text was checked (`check_sent_sql`) before it came here.
        cursor.execute(sql, binary=True)
        header = tuple(column.name for column in cursor.description or ())
        rows = [tuple(_plain(value) for value in row) for row in cursor.fetchall()]
        connection.rollback()  # read only: nothing to commit
    return [header, *rows]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def postgres_reader(source: DataSource, secrets: SourceSecrets) -> PushdownReader:
    """The reader that runs smartnoise-sql's subqueries on `source`'s table."""
    credentials = credentials_of(source, secrets)
    relation, parts = relation_of(source)
    return PushdownReader(relation, parts, lambda sql: run_sql(credentials, sql))


def check_reachable(source: DataSource, secrets: SourceSecrets) -> None:
    """Before any data access (a worker's preflight): the credentials exist, the database answers
    and the table is there. FailedPrecondition (DATASET_SOURCE_UNAVAILABLE) otherwise, so the
    query's reservation can still be refunded."""
    _columns(source, secrets)


def check_postgres_source(
    source: DataSource, metadata: DatasetMetadata, secrets: SourceSecrets
) -> None:
    """Registration: the table exists, the role may read it, and it has every column of the
    metadata with a type the metadata's type reads (no row is read)."""
    columns = _columns(source, secrets)
    missing = [name for name in metadata.column_names if name not in columns]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:20])
        raise InvalidMetadata(
            f"the metadata names column(s) the table {source.schema}.{source.table} does not "
            f"have: {shown} (PostgreSQL column names are compared exactly, in lower case unless "
            "quoted when created)"
        )
    for name in metadata.column_names:
        wanted = metadata.column_type(name)
        if columns[name] not in _READS_AS[wanted]:
            raise InvalidMetadata(
                f"column {name!r} is {columns[name]} in the table, but the metadata says {wanted}"
            )


def _columns(source: DataSource, secrets: SourceSecrets) -> dict[str, str]:
    """The table's columns and their base type names, as the credentials' role sees them."""
    credentials = credentials_of(source, secrets)
    where = f"the table {source.schema}.{source.table}"
    try:
        with connect(credentials, statement_timeout_seconds=30) as connection:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT c.oid, has_table_privilege(c.oid, 'SELECT') "
                    "AND has_schema_privilege(n.oid, 'USAGE') FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s "
                    "AND c.relkind IN ('r', 'v', 'm', 'p', 'f')",
                    (source.schema, source.table),
                )
                found = cursor.fetchone()
                if found is None:
                    raise FailedPrecondition(
                        f"{where} does not exist (or its role cannot see it)",
                        reason="DATASET_SOURCE_UNAVAILABLE",
                    )
                if not found[1]:
                    raise FailedPrecondition(
                        f"the role of credentials {source.credentials_name!r} may not read {where}",
                        reason="DATASET_SOURCE_UNAVAILABLE",
                    )
                cursor.execute(
                    "SELECT a.attname, CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname "
                    "END FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                    "LEFT JOIN pg_type bt ON bt.oid = t.typbasetype "
                    "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped",
                    (found[0],),
                )
                columns = {str(name): str(type_name) for name, type_name in cursor.fetchall()}
            connection.rollback()
    except psycopg.OperationalError:
        _log.warning("PostgreSQL source unreachable (credentials %s)", source.credentials_name)
        raise FailedPrecondition(
            f"the database of credentials {source.credentials_name!r} cannot be reached",
            reason="DATASET_SOURCE_UNAVAILABLE",
        ) from None
    except psycopg.Error as exc:
        _log.warning("PostgreSQL source refused the check", exc_info=True)
        raise FailedPrecondition(
            f"the database of credentials {source.credentials_name!r} refused to describe "
            f"{where} ({type(exc).__name__})",
            reason="DATASET_SOURCE_UNAVAILABLE",
        ) from None
    return columns
