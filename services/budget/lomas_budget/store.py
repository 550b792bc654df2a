"""SQL storage of the budget ledger (SQLite or PostgreSQL through `lomas_common.db`).

Tables:

* `ledgers`: one row per (user, dataset) with its privacy definition, the cached balances
  (allocation / spent / reserved, per component) and the head of its entry chain;
* `ledger_entries`: the append-only journal, (ledger_id, seq) with a SHA-256 hash chain per ledger;
  this module only ever INSERTs into it;
* `reservations`: one row per query id, its cost (in the ledger's unit) and state.

Decimals are TEXT in SQLite and NUMERIC(38, 18) in PostgreSQL; timestamps are ISO-8601 UTC text, so
that what the hash chain covers reads back byte for byte in both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

from lomas_budget.ledger import (
    EntryKind,
    LedgerBalance,
    LedgerEntry,
    Reservation,
    ReservationState,
    StoredLedger,
)
from lomas_common.db import Database, Row, Transaction, from_db_decimal, to_db_decimal
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss

T = TypeVar("T")

_BALANCES = ("allocation", "spent", "reserved")
_COMPONENTS = ("epsilon", "delta", "rho")
_BALANCE_COLUMNS = [f"{balance}_{name}" for balance in _BALANCES for name in _COMPONENTS]
_LEDGER_COLUMNS = (
    "id, user_name, dataset_name, definition, "
    + ", ".join(_BALANCE_COLUMNS)
    + ", entry_count, head_hash, created_at"
)
_ENTRY_COLUMNS = (
    "ledger_id, seq, kind, epsilon, delta, rho, "
    "query_id, actor, reason, created_at, prev_hash, hash"
)
_RESERVATION_SELECT = (
    "SELECT r.query_id, r.ledger_id, l.user_name, l.dataset_name, l.definition, "
    "r.epsilon, r.delta, r.rho, r.state, r.created_at, r.updated_at "
    "FROM reservations r JOIN ledgers l ON l.id = r.ledger_id"
)


def schema(decimal_type: str) -> list[str]:
    """The DDL of the ledger tables (idempotent)."""
    balances = ",\n    ".join(f"{column} {decimal_type} NOT NULL" for column in _BALANCE_COLUMNS)
    amounts = ",\n    ".join(f"{name} {decimal_type} NOT NULL" for name in _COMPONENTS)
    kinds = ", ".join(f"'{kind.value}'" for kind in EntryKind)
    states = ", ".join(f"'{state.value}'" for state in ReservationState)
    definitions = ", ".join(f"'{definition.value}'" for definition in PrivacyDefinition)
    return [
        f"""CREATE TABLE IF NOT EXISTS ledgers (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    dataset_name TEXT NOT NULL,
    definition TEXT NOT NULL CHECK (definition IN ({definitions})),
    {balances},
    entry_count BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    request_id TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (user_name, dataset_name)
)""",
        f"""CREATE TABLE IF NOT EXISTS ledger_entries (
    ledger_id TEXT NOT NULL REFERENCES ledgers (id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ({kinds})),
    {amounts},
    query_id TEXT,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (ledger_id, seq)
)""",
        f"""CREATE TABLE IF NOT EXISTS reservations (
    query_id TEXT PRIMARY KEY,
    ledger_id TEXT NOT NULL REFERENCES ledgers (id),
    {amounts},
    state TEXT NOT NULL CHECK (state IN ({states})),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS reservations_ledger_id ON reservations (ledger_id)",
    ]


def _loss(definition: PrivacyDefinition, row: Row, prefix: str = "") -> PrivacyLoss:
    return PrivacyLoss(
        definition,
        epsilon=from_db_decimal(row[f"{prefix}epsilon"]),
        delta=from_db_decimal(row[f"{prefix}delta"]),
        rho=from_db_decimal(row[f"{prefix}rho"]),
    )


def _amounts(loss: PrivacyLoss) -> list[str]:
    return [to_db_decimal(getattr(loss, name)) for name in _COMPONENTS]


def _stored_ledger(row: Row) -> StoredLedger:
    definition = PrivacyDefinition(row["definition"])
    balance = LedgerBalance(
        ledger_id=row["id"],
        user=row["user_name"],
        dataset=row["dataset_name"],
        definition=definition,
        allocation=_loss(definition, row, "allocation_"),
        spent=_loss(definition, row, "spent_"),
        reserved=_loss(definition, row, "reserved_"),
        created_at=row["created_at"],
    )
    return StoredLedger(balance, entry_count=int(row["entry_count"]), head_hash=row["head_hash"])


def _entry(row: Row) -> LedgerEntry:
    return LedgerEntry(
        ledger_id=row["ledger_id"],
        seq=int(row["seq"]),
        kind=EntryKind(row["kind"]),
        epsilon=from_db_decimal(row["epsilon"]),
        delta=from_db_decimal(row["delta"]),
        rho=from_db_decimal(row["rho"]),
        query_id=row["query_id"],
        actor=row["actor"],
        reason=row["reason"],
        created_at=row["created_at"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def _reservation(row: Row) -> Reservation:
    return Reservation(
        query_id=row["query_id"],
        ledger_id=row["ledger_id"],
        user=row["user_name"],
        dataset=row["dataset_name"],
        cost=_loss(PrivacyDefinition(row["definition"]), row),
        state=ReservationState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class LedgerSession:
    """The ledger tables as seen from one transaction."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    @staticmethod
    def new_ledger_id() -> str:
        return uuid.uuid4().hex

    # ledgers

    def find_ledger(
        self, user: str, dataset: str, *, for_update: bool = False
    ) -> StoredLedger | None:
        row = self._tx.fetchone(
            f"SELECT {_LEDGER_COLUMNS} FROM ledgers WHERE user_name = ? AND dataset_name = ?"
            + (self._tx.lock_suffix if for_update else ""),
            (user, dataset),
        )
        return _stored_ledger(row) if row else None

    def get_ledger(self, ledger_id: str, *, for_update: bool = False) -> StoredLedger | None:
        row = self._tx.fetchone(
            f"SELECT {_LEDGER_COLUMNS} FROM ledgers WHERE id = ?"
            + (self._tx.lock_suffix if for_update else ""),
            (ledger_id,),
        )
        return _stored_ledger(row) if row else None

    def list_ledgers(self, *, user: str) -> list[StoredLedger]:
        rows = self._tx.fetchall(
            f"SELECT {_LEDGER_COLUMNS} FROM ledgers WHERE user_name = ? ORDER BY dataset_name",
            (user,),
        )
        return [_stored_ledger(row) for row in rows]

    def ledger_ids(self) -> list[str]:
        return [row["id"] for row in self._tx.fetchall("SELECT id FROM ledgers ORDER BY id")]

    def insert_ledger(self, stored: StoredLedger, *, request_id: str | None) -> None:
        balance = stored.balance
        values = [
            balance.ledger_id,
            balance.user,
            balance.dataset,
            balance.definition.value,
            *_amounts(balance.allocation),
            *_amounts(balance.spent),
            *_amounts(balance.reserved),
            stored.entry_count,
            stored.head_hash,
            balance.created_at,
            request_id,
        ]
        placeholders = ", ".join("?" * len(values))
        self._tx.execute(
            f"INSERT INTO ledgers ({_LEDGER_COLUMNS}, request_id) VALUES ({placeholders})",
            values,
        )

    def update_ledger(self, stored: StoredLedger) -> None:
        """Write the cached balances and chain head (the row is locked by this transaction)."""
        balance = stored.balance
        assignments = ", ".join(f"{column} = ?" for column in _BALANCE_COLUMNS)
        self._tx.execute(
            f"UPDATE ledgers SET {assignments}, entry_count = ?, head_hash = ? WHERE id = ?",
            [
                *_amounts(balance.allocation),
                *_amounts(balance.spent),
                *_amounts(balance.reserved),
                stored.entry_count,
                stored.head_hash,
                balance.ledger_id,
            ],
        )

    # entries (append-only)

    def insert_entry(self, entry: LedgerEntry) -> None:
        self._tx.execute(
            f"INSERT INTO ledger_entries ({_ENTRY_COLUMNS}) VALUES ({', '.join('?' * 12)})",
            (
                entry.ledger_id,
                entry.seq,
                entry.kind.value,
                to_db_decimal(entry.epsilon),
                to_db_decimal(entry.delta),
                to_db_decimal(entry.rho),
                entry.query_id,
                entry.actor,
                entry.reason,
                entry.created_at,
                entry.prev_hash,
                entry.hash,
            ),
        )

    def entries(self, ledger_id: str) -> list[LedgerEntry]:
        rows = self._tx.fetchall(
            f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries WHERE ledger_id = ? ORDER BY seq",
            (ledger_id,),
        )
        return [_entry(row) for row in rows]

    # reservations

    def find_reservation(self, query_id: str) -> Reservation | None:
        row = self._tx.fetchone(f"{_RESERVATION_SELECT} WHERE r.query_id = ?", (query_id,))
        return _reservation(row) if row else None

    def reservations(self, ledger_id: str) -> list[Reservation]:
        rows = self._tx.fetchall(
            f"{_RESERVATION_SELECT} WHERE r.ledger_id = ? ORDER BY r.created_at, r.query_id",
            (ledger_id,),
        )
        return [_reservation(row) for row in rows]

    def insert_reservation(self, reservation: Reservation) -> None:
        self._tx.execute(
            "INSERT INTO reservations "
            "(query_id, ledger_id, epsilon, delta, rho, state, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                reservation.query_id,
                reservation.ledger_id,
                *_amounts(reservation.cost),
                reservation.state.value,
                reservation.created_at,
                reservation.updated_at,
            ),
        )

    def update_reservation(self, reservation: Reservation) -> None:
        """Write a reservation's state (its ledger row is locked by this transaction)."""
        self._tx.execute(
            "UPDATE reservations SET state = ?, updated_at = ? WHERE query_id = ?",
            (reservation.state.value, reservation.updated_at, reservation.query_id),
        )


class LedgerStore:
    """The ledger tables in one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(self) -> None:
        self.db.apply_schema(schema(self.db.decimal_type))

    def run(self, work: Callable[[LedgerSession], T], *, readonly: bool = False) -> T:
        """Run `work` in one transaction (re-run if it lost a race; see `Database.run`)."""
        return self.db.run(lambda tx: work(LedgerSession(tx)), readonly=readonly)
