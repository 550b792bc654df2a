"""Budget tests run against real storage: a SQLite file and a fresh PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lomas_budget.ledger import BudgetLedger
from lomas_budget.store import LedgerStore
from lomas_common.db import Database
from lomas_common.testing import fresh_postgres_url, sqlite_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each kind (the PostgreSQL one is dropped afterwards)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "budget.db")
        return
    url, drop = fresh_postgres_url("lomas_budget_test")
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database.from_url(database_url)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def ledger(database: Database) -> BudgetLedger:
    store = LedgerStore(database)
    store.create_schema()
    return BudgetLedger(store)
