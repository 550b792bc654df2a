"""Budget tests run against real storage: a SQLite file and a fresh PostgreSQL database."""

from __future__ import annotations

import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(
    0, str(Path(__file__).parent)
)  # budget_testing, and the modules spawned processes run

from budget_testing import BudgetProcess, FakeClock, Peer, approx, open_ledger

from lomas_budget.ledger import BudgetLedger
from lomas_budget.store import LedgerStore
from lomas_common.db import Database, Transaction
from lomas_testing.databases import (
    KINDS,
    fresh_postgres_url,
    open_database,
    scratch_database,
    sqlite_url,
)


@pytest.fixture(params=KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each kind (the PostgreSQL one is dropped afterwards)."""
    yield from scratch_database(request.param, tmp_path, "lomas_budget_test")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    yield from open_database(database_url)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(database: Database, clock: FakeClock) -> BudgetLedger:
    """A ledger on real storage whose time moves only when the test says (`clock.advance`)."""
    store = LedgerStore(database)
    store.create_schema()
    return BudgetLedger(store, clock=clock)


def bypass_append_only(tx: Transaction) -> None:
    """What an attacker with database rights does first: get the append-only triggers out of the
    way (PostgreSQL: replica mode skips ordinary triggers, foreign keys included)."""
    tx.execute("SET LOCAL session_replication_role = replica")


@pytest.fixture
def tamper(database: Database, database_url: str) -> Callable[..., int]:
    """Change the database behind the ledger's back with direct SQL, append-only triggers and
    foreign keys bypassed; returns the number of rows changed."""

    def run(sql: str, params: tuple[object, ...] = ()) -> int:
        if database.dialect == "postgresql":
            with database.transaction() as tx:
                bypass_append_only(tx)
                return tx.execute(sql, params).rowcount
        # a plain sqlite3 connection: foreign keys off, as they are by default
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            connection.execute("DROP TRIGGER IF EXISTS ledger_entries_no_update")
            connection.execute("DROP TRIGGER IF EXISTS ledger_entries_no_delete")
            count = connection.execute(sql, params).rowcount
            connection.commit()
            return count
        finally:
            connection.close()

    return run


# --- the service over gRPC: one real `lomas_budget.main` process per test module and store ------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BudgetProcess]:
    tmp = tmp_path_factory.mktemp("budget-api")
    drop: Callable[[], None]
    if request.param == "sqlite":
        url, drop = sqlite_url(tmp / "budget.db"), (lambda: None)
    else:
        url, drop = fresh_postgres_url("lomas_budget_test")
    process = BudgetProcess(url, tmp / "budget.log", sweep_interval_seconds="0.2").start()
    try:
        yield process
    finally:
        process.kill()
        drop()


@pytest.fixture
def budget(service: BudgetProcess) -> Iterator[Peer]:
    peer = service.peer()
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def user(budget: Peer) -> str:
    """A fresh user with an approximate-DP ledger on penguins (epsilon 10, delta 0.001)."""
    name = f"user-{uuid.uuid4().hex[:8]}"
    open_ledger(budget, name, "penguins", approx("10", "0.001"))
    return name
