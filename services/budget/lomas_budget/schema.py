"""The ledger tables, their append-only triggers, and the upgrade of databases written by the first
version of the ledger.

Tables:

* `ledgers`: one row per (user, dataset) with its privacy definition, the cached balances
  (allocation / spent / reserved, per component), the head of its entry chain and two cached flags
  (`frozen`: its user may not start queries; `capped`: its dataset has a cap);
* `ledger_entries`: the append-only journal, (ledger_id, seq) with a SHA-256 hash chain per ledger.
  The store only ever INSERTs into it, and a trigger refuses UPDATE and DELETE (and TRUNCATE on
  PostgreSQL), so a change needs someone who can drop the trigger, and verification still finds it;
* `reservations`: one row per query id, its cost (in the ledger's unit), state, owner and expiry;
* `ledger_users`: one row per user the ledger knows, with the freeze flag (the row every freeze and
  every ledger opening locks);
* `ledger_datasets`: one row per dataset, with its optional cap and what its ledgers use of it;
* `budget_requests`: the first answer to every mutating call that carried a request id.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from lomas_budget.model import ReservationState, stamp
from lomas_budget.tables import (
    BALANCE_COLUMNS,
    COMPONENTS,
    ENTRY_COLUMNS,
    kinds_list,
    open_states_list,
)
from lomas_common.db import Transaction
from lomas_common.privacy import PrivacyDefinition

# Serialises schema creation across service replicas starting together (PostgreSQL).
_SCHEMA_LOCK_KEY = 7_265_802


def schema(decimal_type: str) -> list[str]:
    """The DDL of the ledger tables (idempotent; the triggers are in `_triggers`)."""
    balances = ",\n    ".join(f"{column} {decimal_type} NOT NULL" for column in BALANCE_COLUMNS)
    amounts = ",\n    ".join(f"{name} {decimal_type} NOT NULL" for name in COMPONENTS)
    caps = ",\n    ".join(
        f"{prefix}_{name} {decimal_type}" for prefix in ("cap", "used") for name in COMPONENTS
    )
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
    frozen INTEGER NOT NULL DEFAULT 0,
    capped INTEGER NOT NULL DEFAULT 0,
    request_id TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (user_name, dataset_name)
)""",
        "CREATE INDEX IF NOT EXISTS ledgers_dataset ON ledgers (dataset_name)",
        f"""CREATE TABLE IF NOT EXISTS ledger_entries (
    ledger_id TEXT NOT NULL REFERENCES ledgers (id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ({kinds_list()})),
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
    owner TEXT NOT NULL DEFAULT '',
    expires_at TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS reservations_ledger_id ON reservations (ledger_id)",
        """CREATE TABLE IF NOT EXISTS ledger_users (
    user_name TEXT PRIMARY KEY,
    frozen INTEGER NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    updated_at TEXT NOT NULL
)""",
        f"""CREATE TABLE IF NOT EXISTS ledger_datasets (
    dataset_name TEXT PRIMARY KEY,
    cap_definition TEXT CHECK (cap_definition IS NULL OR cap_definition IN ({definitions})),
    {caps},
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    updated_at TEXT NOT NULL
)""",
        """CREATE TABLE IF NOT EXISTS budget_requests (
    request_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at TEXT NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS budget_requests_created_at ON budget_requests (created_at)",
    ]


def create_schema(tx: Transaction, decimal_type: str, reservation_ttl_seconds: int) -> None:
    """Create the tables, indexes and append-only triggers (idempotent), and bring a database
    written by an earlier version up to date, in one transaction."""
    if tx.dialect == "postgresql":
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK_KEY,))
    for statement in schema(decimal_type):
        tx.execute(statement)
    _migrate(tx, reservation_ttl_seconds)
    tx.execute(_expiry_index())
    for statement in _triggers(tx.dialect):
        tx.execute(statement)


def _expiry_index() -> str:
    return (
        "CREATE INDEX IF NOT EXISTS reservations_open_expiry ON reservations (expires_at) "
        f"WHERE state IN ({open_states_list()})"
    )


def _triggers(dialect: str) -> list[str]:
    """Refuse UPDATE and DELETE (and TRUNCATE) of ledger entries in the database itself."""
    if dialect == "sqlite":
        return [
            f"""CREATE TRIGGER IF NOT EXISTS ledger_entries_no_{operation.lower()}
BEFORE {operation} ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END"""
            for operation in ("UPDATE", "DELETE")
        ]
    return [
        """CREATE OR REPLACE FUNCTION lomas_ledger_entries_append_only() RETURNS trigger
LANGUAGE plpgsql AS $body$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$body$""",
        """DO $body$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'ledger_entries_append_only'
                   AND tgrelid = 'ledger_entries'::regclass) THEN
        CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
            FOR EACH ROW EXECUTE FUNCTION lomas_ledger_entries_append_only();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'ledger_entries_no_truncate'
                   AND tgrelid = 'ledger_entries'::regclass) THEN
        CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
            FOR EACH STATEMENT EXECUTE FUNCTION lomas_ledger_entries_append_only();
    END IF;
END
$body$""",
    ]


def _columns(tx: Transaction, table: str) -> set[str]:
    if tx.dialect == "sqlite":
        return {row["name"] for row in tx.fetchall(f"PRAGMA table_info({table})")}
    rows = tx.fetchall(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ?",
        (table,),
    )
    return {row["column_name"] for row in rows}


def _migrate(tx: Transaction, reservation_ttl_seconds: int) -> None:
    """Upgrade tables created by the first version of the ledger (no freeze, cap or expiry):
    new columns and entry kinds; reservations that had no expiry get one TTL after their
    creation."""
    if "frozen" in _columns(tx, "ledgers"):
        return
    for statement in (
        "ALTER TABLE ledgers ADD COLUMN frozen INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE ledgers ADD COLUMN capped INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE reservations ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE reservations ADD COLUMN expires_at TEXT NOT NULL DEFAULT ''",
    ):
        tx.execute(statement)
    ttl = timedelta(seconds=reservation_ttl_seconds)
    for row in tx.fetchall("SELECT query_id, created_at FROM reservations"):
        expires = stamp(datetime.fromisoformat(row["created_at"]) + ttl)
        tx.execute(
            "UPDATE reservations SET expires_at = ? WHERE query_id = ?", (expires, row["query_id"])
        )
    # The entry kinds are a CHECK constraint: PostgreSQL replaces it, SQLite copies the table
    # (rows verbatim, so every hash still holds).
    if tx.dialect == "postgresql":
        tx.execute("ALTER TABLE ledger_entries DROP CONSTRAINT IF EXISTS ledger_entries_kind_check")
        tx.execute(
            "ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check "
            f"CHECK (kind IN ({kinds_list()}))"
        )
        return
    create = next(s for s in schema("TEXT") if "TABLE IF NOT EXISTS ledger_entries" in s)
    tx.execute(create.replace("ledger_entries (", "ledger_entries_v2 (", 1))
    tx.execute(
        f"INSERT INTO ledger_entries_v2 ({ENTRY_COLUMNS}) SELECT {ENTRY_COLUMNS} FROM ledger_entries"
    )
    tx.execute("DROP TABLE ledger_entries")
    tx.execute("ALTER TABLE ledger_entries_v2 RENAME TO ledger_entries")


__all__ = ["create_schema", "schema"]
