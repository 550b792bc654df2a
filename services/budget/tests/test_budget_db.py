"""The shared SQL layer (`lomas_common.db`) as the budget store uses it, on both databases."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from lomas_common.db import (
    Database,
    Transaction,
    UniqueViolation,
    from_db_decimal,
    to_db_decimal,
)
from lomas_testing.databases import fresh_postgres_url


@pytest.fixture
def table(database: Database) -> Database:
    schema = [
        f"CREATE TABLE IF NOT EXISTS things (name TEXT PRIMARY KEY, amount {database.decimal_type})"
    ]
    database.apply_schema(schema)
    database.apply_schema(schema)  # idempotent
    return database


def test_decimals_read_back_exactly(table: Database) -> None:
    values = {
        "tiny": D("0.000000000000000001"),
        "big": D("99999999999999999999.999999999999999999"),
        "zero": D(0),
        "tenth": D("0.1"),
    }
    with table.transaction() as tx:
        for name, value in values.items():
            tx.execute(
                "INSERT INTO things (name, amount) VALUES (?, ?)",
                (name, to_db_decimal(value)),
            )
    with table.transaction(readonly=True) as tx:
        rows = tx.fetchall("SELECT name, amount FROM things")
    read = {row["name"]: from_db_decimal(row["amount"]) for row in rows}
    assert read == values
    assert {name: str(value) for name, value in read.items()}["big"] == (
        "99999999999999999999.999999999999999999"
    )
    a_float: Any = 0.1  # what an untyped caller could pass
    with pytest.raises(TypeError):
        to_db_decimal(a_float)


def test_placeholders_and_percent_signs(table: Database) -> None:
    with table.transaction() as tx:
        tx.execute("INSERT INTO things (name, amount) VALUES (?, ?)", ("50%", "1"))
        tx.execute("INSERT INTO things (name, amount) VALUES (?, ?)", ("other", "2"))
    with table.transaction(readonly=True) as tx:
        rows = tx.fetchall("SELECT name FROM things WHERE name LIKE '%\\%' ESCAPE '\\'")
        assert rows == [{"name": "50%"}]
        assert tx.fetchone("SELECT name FROM things WHERE name = ?", ("missing",)) is None


def test_a_failed_transaction_rolls_back(table: Database) -> None:
    with pytest.raises(RuntimeError), table.transaction() as tx:
        tx.execute("INSERT INTO things (name, amount) VALUES (?, ?)", ("a", "1"))
        raise RuntimeError("boom")
    with table.transaction(readonly=True) as tx:
        assert tx.fetchall("SELECT name FROM things") == []


def test_unique_violations_are_translated(table: Database) -> None:
    with table.transaction() as tx:
        tx.execute("INSERT INTO things (name, amount) VALUES (?, ?)", ("a", "1"))
    with pytest.raises(UniqueViolation), table.transaction() as tx:
        tx.execute("INSERT INTO things (name, amount) VALUES (?, ?)", ("a", "2"))


def test_run_reruns_a_transaction_that_lost_a_race_on_postgresql() -> None:
    """Check-then-insert under READ COMMITTED: a concurrent transaction inserts the same key
    between our check and our insert; `run` re-runs our transaction, which then finds the row.
    (SQLite cannot race here: BEGIN IMMEDIATE serialises writers up front.)"""
    url, drop = fresh_postgres_url("lomas_budget_test")
    db = Database.from_url(url)
    try:
        db.apply_schema(["CREATE TABLE things (name TEXT PRIMARY KEY, amount TEXT)"])
        attempts: list[int] = []

        def insert_once(tx: Transaction) -> str:
            attempts.append(1)
            row = tx.fetchone("SELECT amount FROM things WHERE name = ?", ("a",))
            if row is not None:
                return f"found {row['amount']}"
            if len(attempts) == 1:  # another connection commits the same key first
                with db.transaction() as other:
                    other.execute("INSERT INTO things (name, amount) VALUES (?, ?)", ("a", "1"))
            tx.execute("INSERT INTO things (name, amount) VALUES (?, ?)", ("a", "2"))
            return "inserted"

        assert db.run(insert_once) == "found 1"
        assert len(attempts) == 2
    finally:
        db.close()
        drop()


def test_lock_suffix(database: Database) -> None:
    with database.transaction() as tx:
        expected = " FOR UPDATE" if database.dialect == "postgresql" else ""
        assert tx.lock_suffix == expected


def test_bad_urls_are_refused() -> None:
    for url in ("mysql://x/y", "sqlite://relative.db", "sqlite:///:memory:"):
        with pytest.raises(ValueError):
            Database.from_url(url)
