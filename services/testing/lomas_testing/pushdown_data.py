"""Datasets that stay where they are, for tests and benchmarks: a PostgreSQL table behind a role
that may read it and nothing else, and a folder of Parquet files.

The table lives in database `test` of the machine's PostgreSQL (127.0.0.1:5432, trust auth; the
connection `LOMAS_TEST_PUSHDOWN_URL` overrides it) in a schema of its own with a random suffix, next
to a `secret` table the role may not read; `postgres_table` drops the schema and the role on exit.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

# Spark sessions that start fast, for tests: the driver JVM with the C1 compiler only (tiny tables
# never need C2's optimised code) and the serial garbage collector (no GC threads on a 2-core
# machine), one shuffle partition (Spark's 200, or the workers' 8, are empty tasks here).
TEST_SPARK_CONF = {
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    "spark.sql.shuffle.partitions": "1",
}
TEST_SPARK_DRIVER_MEMORY = "512m"

PUSHDOWN_URL_ENV = "LOMAS_TEST_PUSHDOWN_URL"
DEFAULT_PUSHDOWN_URL = "postgresql://postgres@127.0.0.1:5432/test"
TABLE = "penguins"
SECRET_TABLE = "secret"  # noqa: S105 - a table name, not a password

_SQL_TYPES = {"string": "text", "float": "double precision", "int": "bigint", "boolean": "boolean"}


def admin_url() -> str:
    return os.environ.get(PUSHDOWN_URL_ENV, DEFAULT_PUSHDOWN_URL)


@dataclass(frozen=True)
class PostgresTable:
    """A table made for one test session, and a role that may SELECT on it only."""

    schema: str
    table: str
    role: str
    host: str
    port: int
    dbname: str

    def credentials(self) -> dict[str, Any]:
        """The role's entry in a LOMAS_POSTGRES_CREDENTIALS_FILE."""
        return {"host": self.host, "port": self.port, "dbname": self.dbname, "user": self.role}

    def scans(self, table: str | None = None) -> int:
        """Sequential plus index scans PostgreSQL counted on `table` (default: the dataset's)."""
        with psycopg.connect(admin_url(), autocommit=True) as connection:
            connection.execute("SELECT pg_stat_clear_snapshot()")
            row = connection.execute(
                "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                "WHERE schemaname = %s AND relname = %s",
                (self.schema, table or self.table),
            ).fetchone()
        return int(row[0]) if row else 0


@contextmanager
def postgres_table(frame: pd.DataFrame, types: Mapping[str, str]) -> Iterator[PostgresTable]:
    """`frame` in a new table (`types`: column name to metadata type), and a role that may read
    it; both dropped on exit."""
    suffix = uuid.uuid4().hex[:10]
    schema, role = f"lomas_pushdown_{suffix}", f"lomas_reader_{suffix}"
    url = admin_url()
    with psycopg.connect(url, autocommit=True) as connection:
        info = connection.info
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(_SQL_TYPES[types[name]]))
            for name in frame.columns
        )
        for table in (TABLE, SECRET_TABLE):
            connection.execute(
                sql.SQL("CREATE TABLE {}.{} ({})").format(
                    sql.Identifier(schema), sql.Identifier(table), columns
                )
            )
        copy_frame(connection, schema, TABLE, frame)
        copy_frame(connection, schema, SECRET_TABLE, frame.head(3))
        connection.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
        connection.execute(
            sql.SQL("GRANT SELECT ON {}.{} TO {}").format(
                sql.Identifier(schema), sql.Identifier(TABLE), sql.Identifier(role)
            )
        )
        connection.execute(
            sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema), sql.Identifier(TABLE))
        )
        made = PostgresTable(schema, TABLE, role, info.host, info.port, info.dbname)
    try:
        yield made
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def copy_frame(
    connection: psycopg.Connection[Any], schema: str, table: str, frame: pd.DataFrame
) -> None:
    """Append `frame`'s rows to a table with COPY (CSV; NULL for missing values)."""
    text = io.StringIO()
    frame.to_csv(text, index=False, header=False, na_rep="\\N")
    statement = sql.SQL("COPY {}.{} ({}) FROM STDIN WITH (FORMAT csv, NULL '\\N')").format(
        sql.Identifier(schema),
        sql.Identifier(table),
        sql.SQL(", ").join(sql.Identifier(name) for name in frame.columns),
    )
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(text.getvalue())


def spark_conf_env(conf: Mapping[str, str] = TEST_SPARK_CONF) -> str:
    """`conf` as LOMAS_SPARK_CONF reads it (key=value pairs separated by commas)."""
    return ",".join(f"{key}={value}" for key, value in conf.items())


def parquet_folder(frame: pd.DataFrame, folder: Path, files: int = 2) -> Path:
    """`frame` as a folder of `files` Parquet files."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    step = -(-table.num_rows // files)
    for index in range(files):
        pq.write_table(table.slice(index * step, step), folder / f"part-{index:05d}.parquet")
    return folder
