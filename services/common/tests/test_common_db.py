"""The shared SQL layer on both databases: exact decimals, idempotent schemas, read-only snapshots,
and the throwaway PostgreSQL databases of tests and the local mesh."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lomas_common.db import Database, Transaction, from_db_decimal, to_db_decimal
from lomas_testing.databases import fresh_postgres_url, postgres_maintenance_url, sqlite_url

SCHEMA = ["CREATE TABLE IF NOT EXISTS amounts (name TEXT PRIMARY KEY, amount {decimal} NOT NULL)"]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database.from_url(sqlite_url(tmp_path / "test.db"))
        drop = None
    else:
        url, drop = fresh_postgres_url()
        db = Database.from_url(url, max_connections=2)
    try:
        yield db
    finally:
        db.close()
        if drop is not None:
            drop()


def test_decimals_go_in_as_text_and_come_back_exact_without_trailing_zeros() -> None:
    assert to_db_decimal(Decimal("1.500")) == "1.5"
    assert to_db_decimal(Decimal("1E-18")) == "0.000000000000000001"
    assert from_db_decimal("0.100000000000000000") == Decimal("0.1")
    assert from_db_decimal(Decimal("2.000")) == Decimal("2")
    assert from_db_decimal(3) == Decimal(3)
    a_float: Any = 0.1  # what a caller without a type checker could pass
    with pytest.raises(TypeError):
        to_db_decimal(a_float)
    for value in (True, 0.5, None):
        with pytest.raises(TypeError):
            from_db_decimal(value)


def test_schemas_apply_twice_and_decimals_round_trip(database: Database) -> None:
    schema = [statement.format(decimal=database.decimal_type) for statement in SCHEMA]
    database.apply_schema(schema)
    database.apply_schema(schema)  # idempotent: every service applies its schema at start
    values = {"small": Decimal("1E-18"), "plain": Decimal("0.1"), "large": Decimal("1E+19")}
    with database.transaction() as tx:
        for name, amount in values.items():
            tx.execute("INSERT INTO amounts VALUES (?, ?)", (name, to_db_decimal(amount)))
    with database.transaction(readonly=True) as tx:
        rows = tx.fetchall("SELECT name, amount FROM amounts ORDER BY name")
    assert {row["name"]: from_db_decimal(row["amount"]) for row in rows} == values


def test_run_returns_the_work_result_and_rolls_back_what_raised(database: Database) -> None:
    database.apply_schema([statement.format(decimal=database.decimal_type) for statement in SCHEMA])

    def insert_then_fail(tx: Transaction) -> None:
        tx.execute("INSERT INTO amounts VALUES (?, ?)", ("lost", "1"))
        raise RuntimeError("after the insert")

    with pytest.raises(RuntimeError):
        database.run(insert_then_fail)
    count = database.run(
        lambda tx: (tx.fetchone("SELECT COUNT(*) AS n FROM amounts") or {})["n"], readonly=True
    )
    assert count == 0
    with pytest.raises(ValueError, match="pipelined transaction is a write transaction"):
        with database.transaction(readonly=True, pipelined=True):
            pass


def test_a_fresh_postgres_database_is_empty_and_dropped_for_good() -> None:
    url, drop = fresh_postgres_url("lomas_common_test")
    name = url.rsplit("/", 1)[1]
    assert name.startswith("lomas_common_test_")
    with psycopg.connect(url) as connection:
        tables = connection.execute(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)
    drop()
    drop()  # twice is harmless
    with psycopg.connect(postgres_maintenance_url()) as connection:
        found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        assert found.fetchone() is None
