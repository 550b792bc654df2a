"""A database written by the first version of the ledger (no freeze, cap, expiry or adjustment)
is brought up to date on start-up, its hash chains intact."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from budget_testing import FakeClock

from lomas_budget.journal import chain_hash, chain_prefix
from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import GENESIS_HASH, stamp
from lomas_budget.store import LedgerStore
from lomas_common.db import Database
from lomas_common.privacy import PrivacyLoss

# The tables as the first version created them (services/budget/lomas_budget/store.py at v1).
V1_KINDS = "'allocation', 'imported_spend', 'reservation', 'access', 'commit', 'release'"


def v1_schema(decimal: str) -> list[str]:
    balances = ",\n".join(
        f"{b}_{c} {decimal} NOT NULL"
        for b in ("allocation", "spent", "reserved")
        for c in ("epsilon", "delta", "rho")
    )
    amounts = ",\n".join(f"{c} {decimal} NOT NULL" for c in ("epsilon", "delta", "rho"))
    return [
        f"""CREATE TABLE ledgers (id TEXT PRIMARY KEY, user_name TEXT NOT NULL,
        dataset_name TEXT NOT NULL,
        definition TEXT NOT NULL CHECK (definition IN ('approx_dp', 'pure_dp', 'rho_zcdp')),
        {balances}, entry_count BIGINT NOT NULL, head_hash TEXT NOT NULL, request_id TEXT,
        created_at TEXT NOT NULL, UNIQUE (user_name, dataset_name))""",
        f"""CREATE TABLE ledger_entries (ledger_id TEXT NOT NULL REFERENCES ledgers (id),
        seq BIGINT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ({V1_KINDS})), {amounts},
        query_id TEXT, actor TEXT NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (ledger_id, seq))""",
        f"""CREATE TABLE reservations (query_id TEXT PRIMARY KEY,
        ledger_id TEXT NOT NULL REFERENCES ledgers (id), {amounts},
        state TEXT NOT NULL CHECK (state IN ('reserved', 'accessed', 'committed', 'released')),
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        "CREATE INDEX reservations_ledger_id ON reservations (ledger_id)",
    ]


def write_v1_ledger(database: Database, created: datetime) -> None:
    """alice/penguins: allocation (10, 0.001), then q1 reserved (1, 0), as v1 wrote them."""
    database.apply_schema(v1_schema(database.decimal_type))
    at = stamp(created)
    rows = [("allocation", "10", "0.001", None), ("reservation", "1", "0", "q1")]
    prev = GENESIS_HASH
    with database.transaction() as tx:
        tx.execute(
            "INSERT INTO ledgers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "L1",
                "alice",
                "penguins",
                "approx_dp",
                "10",
                "0.001",
                "0",
                "0",
                "0",
                "0",
                "1",
                "0",
                "0",
                0,
                GENESIS_HASH,
                None,
                at,
            ),
        )
        for seq, (kind, epsilon, delta, query_id) in enumerate(rows, start=1):
            digest = chain_hash(
                chain_prefix("L1", "alice", "penguins", "approx_dp"),
                seq,
                kind,
                epsilon,
                delta,
                "0",
                query_id,
                "admin",
                "",
                at,
                prev,
            )
            tx.execute(
                "INSERT INTO ledger_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ("L1", seq, kind, epsilon, delta, "0", query_id, "admin", "", at, prev, digest),
            )
            prev = digest
        tx.execute("UPDATE ledgers SET entry_count = 2, head_hash = ? WHERE id = 'L1'", (prev,))
        tx.execute(
            "INSERT INTO reservations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("q1", "L1", "1", "0", "0", "reserved", at, at),
        )


def test_a_v1_database_is_upgraded_in_place(database: Database) -> None:
    clock = FakeClock()
    created = clock() - timedelta(minutes=5)
    write_v1_ledger(database, created)
    store = LedgerStore(database)
    store.create_schema(reservation_ttl_seconds=600)
    store.create_schema(reservation_ttl_seconds=600)  # and again: nothing more to do
    ledger = BudgetLedger(store, clock=clock)
    assert ledger.verify_all() == []
    reservation = ledger.get_reservation("q1")
    assert reservation.expires_at == stamp(created + timedelta(seconds=600))
    # what v1 could not record
    twelve = PrivacyLoss.approx_dp(Decimal(12), Decimal("0.001"))
    ledger.adjust_allocation("alice", "penguins", twelve, "admin")
    ledger.freeze_user("alice", "admin", "upgrade check")
    clock.advance(301)
    assert ledger.sweep().released == ("q1",)
    with database.transaction() as tx:
        kinds = [r["kind"] for r in tx.fetchall("SELECT kind FROM ledger_entries ORDER BY seq")]
    assert kinds == ["allocation", "reservation", "adjustment", "freeze", "release"]
    assert ledger.verify_all() == []
