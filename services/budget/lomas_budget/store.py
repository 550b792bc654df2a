"""SQL storage of the budget ledger (SQLite or PostgreSQL through `lomas_common.db`).

Tables:

* `ledgers`: one row per (user, dataset) with its privacy definition, the cached balances
  (allocation / spent / reserved, per component), the head of its entry chain and two cached flags
  (`frozen`: its user may not start queries; `capped`: its dataset has a cap);
* `ledger_entries`: the append-only journal, (ledger_id, seq) with a SHA-256 hash chain per ledger.
  This module only ever INSERTs into it, and a trigger refuses UPDATE and DELETE (and TRUNCATE on
  PostgreSQL), so a change needs someone who can drop the trigger, and verification still finds it;
* `reservations`: one row per query id, its cost (in the ledger's unit), state, owner and expiry;
* `ledger_users`: one row per user the ledger knows, with the freeze flag (the row every freeze and
  every ledger opening locks);
* `ledger_datasets`: one row per dataset, with its optional cap and what its ledgers use of it;
* `budget_requests`: the first answer to every mutating call that carried a request id.

Decimals are TEXT in SQLite and NUMERIC(38, 18) in PostgreSQL; timestamps are ISO-8601 UTC text, so
that what the hash chain covers reads back byte for byte in both.

Round trips: on PostgreSQL every ledger change is one locking SELECT and one statement that writes
the entries, the reservation, the dataset's use and the ledger row together (data-modifying CTEs),
so a reservation or a commit costs BEGIN, SELECT, write, COMMIT. SQLite runs the same changes as
separate statements (in-process calls, under the database write lock).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

from lomas_budget.ledger import (
    DEFAULT_RESERVATION_TTL_SECONDS,
    DatasetCap,
    EntryKind,
    LedgerBalance,
    LedgerEntry,
    Reservation,
    ReservationState,
    StoredRequest,
    UserState,
    stamp,
)
from lomas_common.db import Database, Row, Transaction, from_db_decimal, to_db_decimal
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss

T = TypeVar("T")

_BALANCES = ("allocation", "spent", "reserved")
_COMPONENTS = ("epsilon", "delta", "rho")
_BALANCE_COLUMNS = [f"{balance}_{name}" for balance in _BALANCES for name in _COMPONENTS]
_LEDGER_FIELDS = [
    "id",
    "user_name",
    "dataset_name",
    "definition",
    *_BALANCE_COLUMNS,
    "entry_count",
    "head_hash",
    "frozen",
    "capped",
    "created_at",
]
_LEDGER_COLUMNS = ", ".join(_LEDGER_FIELDS)
_L_COLUMNS = ", ".join(f"l.{name}" for name in _LEDGER_FIELDS)
_ENTRY_FIELDS = [
    "ledger_id",
    "seq",
    "kind",
    "epsilon",
    "delta",
    "rho",
    "query_id",
    "actor",
    "reason",
    "created_at",
    "prev_hash",
    "hash",
]
_ENTRY_COLUMNS = ", ".join(_ENTRY_FIELDS)
_RESERVATION_FIELDS = [
    "query_id",
    "ledger_id",
    "epsilon",
    "delta",
    "rho",
    "state",
    "owner",
    "expires_at",
    "created_at",
    "updated_at",
]
_RESERVATION_COLUMNS = ", ".join(_RESERVATION_FIELDS)
# A reservation joined with its own ledger's identity: r_* columns plus the ledger's names.
_R_COLUMNS = ", ".join(f"r.{name} AS r_{name}" for name in _RESERVATION_FIELDS)
_RESERVATION_SELECT = (
    f"SELECT {_R_COLUMNS}, rl.user_name AS rl_user_name, rl.dataset_name AS rl_dataset_name, "
    "rl.definition AS rl_definition FROM reservations r JOIN ledgers rl ON rl.id = r.ledger_id"
)
_DATASET_COLUMNS = (
    "dataset_name, cap_definition, cap_epsilon, cap_delta, cap_rho, "
    "used_epsilon, used_delta, used_rho, actor, reason, updated_at"
)
_STREAM_BATCH = 5000


def _tuple_rows(cursor: Any) -> Any:
    """A psycopg row factory: rows as plain tuples (what `psycopg.rows.tuple_row` does)."""
    return tuple


_SCHEMA_LOCK_KEY = 7_265_802


def schema(decimal_type: str) -> list[str]:
    """The DDL of the ledger tables (idempotent; the triggers are in `_triggers`)."""
    balances = ",\n    ".join(f"{column} {decimal_type} NOT NULL" for column in _BALANCE_COLUMNS)
    amounts = ",\n    ".join(f"{name} {decimal_type} NOT NULL" for name in _COMPONENTS)
    caps = ",\n    ".join(
        f"{prefix}_{name} {decimal_type}" for prefix in ("cap", "used") for name in _COMPONENTS
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
    kind TEXT NOT NULL CHECK (kind IN ({_kinds()})),
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


def _kinds() -> str:
    return ", ".join(f"'{kind.value}'" for kind in EntryKind)


def _open_states() -> str:
    return f"'{ReservationState.RESERVED.value}', '{ReservationState.ACCESSED.value}'"


def _expiry_index() -> str:
    return (
        "CREATE INDEX IF NOT EXISTS reservations_open_expiry ON reservations (expires_at) "
        f"WHERE state IN ({_open_states()})"
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


def _loss(definition: PrivacyDefinition, row: Row, prefix: str = "") -> PrivacyLoss:
    return PrivacyLoss(
        definition,
        epsilon=from_db_decimal(row[f"{prefix}epsilon"]),
        delta=from_db_decimal(row[f"{prefix}delta"]),
        rho=from_db_decimal(row[f"{prefix}rho"]),
    )


def _amounts(loss: PrivacyLoss) -> list[str]:
    return [to_db_decimal(loss.epsilon), to_db_decimal(loss.delta), to_db_decimal(loss.rho)]


def _balance(row: Row) -> LedgerBalance:
    definition = PrivacyDefinition(row["definition"])
    return LedgerBalance(
        ledger_id=row["id"],
        user=row["user_name"],
        dataset=row["dataset_name"],
        definition=definition,
        allocation=_loss(definition, row, "allocation_"),
        spent=_loss(definition, row, "spent_"),
        reserved=_loss(definition, row, "reserved_"),
        created_at=row["created_at"],
        entry_count=int(row["entry_count"]),
        head_hash=row["head_hash"],
        frozen=bool(row["frozen"]),
        capped=bool(row["capped"]),
    )


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
    """From a `_RESERVATION_SELECT` row (r_* columns and the reservation's own ledger)."""
    return Reservation(
        query_id=row["r_query_id"],
        ledger_id=row["r_ledger_id"],
        user=row["rl_user_name"],
        dataset=row["rl_dataset_name"],
        cost=_loss(PrivacyDefinition(row["rl_definition"]), row, "r_"),
        state=ReservationState(row["r_state"]),
        created_at=row["r_created_at"],
        updated_at=row["r_updated_at"],
        owner=row["r_owner"],
        expires_at=row["r_expires_at"],
    )


def _dataset(row: Row) -> DatasetCap:
    if row["cap_definition"] is None:
        cap = used = None
    else:
        definition = PrivacyDefinition(row["cap_definition"])
        cap, used = _loss(definition, row, "cap_"), _loss(definition, row, "used_")
    return DatasetCap(
        dataset=row["dataset_name"],
        cap=cap,
        used=used,
        actor=row["actor"],
        reason=row["reason"],
        updated_at=row["updated_at"],
    )


def _user(row: Row) -> UserState:
    return UserState(
        user=row["user_name"],
        frozen=bool(row["frozen"]),
        actor=row["actor"],
        reason=row["reason"],
        updated_at=row["updated_at"],
    )


def _entry_values(entry: LedgerEntry) -> list[Any]:
    return [
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
    ]


def _reservation_values(reservation: Reservation) -> list[Any]:
    return [
        reservation.query_id,
        reservation.ledger_id,
        *_amounts(reservation.cost),
        reservation.state.value,
        reservation.owner,
        reservation.expires_at,
        reservation.created_at,
        reservation.updated_at,
    ]


def _ledger_update_values(balance: LedgerBalance) -> list[Any]:
    return [
        *_amounts(balance.allocation),
        *_amounts(balance.spent),
        *_amounts(balance.reserved),
        balance.entry_count,
        balance.head_hash,
        int(balance.frozen),
        balance.ledger_id,
    ]


def _placeholders(count: int) -> str:
    return "(" + ", ".join("?" * count) + ")"


_INSERT_ENTRIES = f"INSERT INTO ledger_entries ({_ENTRY_COLUMNS}) VALUES "
_INSERT_RESERVATION = (
    f"INSERT INTO reservations ({_RESERVATION_COLUMNS}) "
    f"VALUES {_placeholders(len(_RESERVATION_FIELDS))}"
)
_UPDATE_RESERVATION = "UPDATE reservations SET state = ?, updated_at = ? WHERE query_id = ?"
_UPDATE_USED = (
    "UPDATE ledger_datasets SET used_epsilon = ?, used_delta = ?, used_rho = ? "
    "WHERE dataset_name = ?"
)
_UPDATE_LEDGER = (
    "UPDATE ledgers SET "
    + ", ".join(f"{column} = ?" for column in _BALANCE_COLUMNS)
    + ", entry_count = ?, head_hash = ?, frozen = ? WHERE id = ?"
)


class LedgerSession:
    """The ledger tables as seen from one transaction."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self._postgres = tx.dialect == "postgresql"
        self._lock = tx.lock_suffix

    @staticmethod
    def new_ledger_id() -> str:
        return uuid.uuid4().hex

    # users and datasets: the rows that serialise freezes, caps and ledger openings

    def _upsert(self, table: str, key: str, columns: str, values: Sequence[Any]) -> None:
        self._tx.execute(
            f"INSERT INTO {table} ({columns}) VALUES {_placeholders(len(values))} "
            f"ON CONFLICT ({key}) DO NOTHING",
            values,
        )

    def lock_user(self, user: str, now: str) -> UserState:
        self._upsert(
            "ledger_users",
            "user_name",
            "user_name, frozen, actor, reason, updated_at",
            (user, 0, "", "", now),
        )
        row = self._tx.fetchone(
            "SELECT user_name, frozen, actor, reason, updated_at FROM ledger_users "
            f"WHERE user_name = ?{self._lock}",
            (user,),
        )
        assert row is not None
        return _user(row)

    def get_user(self, user: str) -> UserState:
        row = self._tx.fetchone(
            "SELECT user_name, frozen, actor, reason, updated_at FROM ledger_users "
            "WHERE user_name = ?",
            (user,),
        )
        return _user(row) if row else UserState(user, False, "", "", "")

    def update_user(self, state: UserState) -> None:
        self._tx.execute(
            "UPDATE ledger_users SET frozen = ?, actor = ?, reason = ?, updated_at = ? "
            "WHERE user_name = ?",
            (int(state.frozen), state.actor, state.reason, state.updated_at, state.user),
        )

    def frozen_users(self) -> set[str]:
        rows = self._tx.fetchall("SELECT user_name FROM ledger_users WHERE frozen <> 0")
        return {row["user_name"] for row in rows}

    def lock_dataset(self, dataset: str, now: str | None) -> DatasetCap:
        """The dataset's row, locked; created (without a cap) first when `now` is given."""
        if now is not None:
            self._upsert(
                "ledger_datasets",
                "dataset_name",
                "dataset_name, actor, reason, updated_at",
                (dataset, "", "", now),
            )
        row = self._tx.fetchone(
            f"SELECT {_DATASET_COLUMNS} FROM ledger_datasets WHERE dataset_name = ?{self._lock}",
            (dataset,),
        )
        return _dataset(row) if row else DatasetCap(dataset, None, None)

    def get_dataset(self, dataset: str) -> DatasetCap:
        row = self._tx.fetchone(
            f"SELECT {_DATASET_COLUMNS} FROM ledger_datasets WHERE dataset_name = ?", (dataset,)
        )
        return _dataset(row) if row else DatasetCap(dataset, None, None)

    def capped_datasets(self) -> dict[str, DatasetCap]:
        rows = self._tx.fetchall(
            f"SELECT {_DATASET_COLUMNS} FROM ledger_datasets WHERE cap_definition IS NOT NULL"
        )
        return {row["dataset_name"]: _dataset(row) for row in rows}

    def update_dataset(self, cap: DatasetCap) -> None:
        if cap.cap is None or cap.used is None:
            values: list[Any] = [None] * 7
        else:
            values = [cap.cap.definition.value, *_amounts(cap.cap), *_amounts(cap.used)]
        self._tx.execute(
            "UPDATE ledger_datasets SET cap_definition = ?, cap_epsilon = ?, cap_delta = ?, "
            "cap_rho = ?, used_epsilon = ?, used_delta = ?, used_rho = ?, actor = ?, reason = ?, "
            "updated_at = ? WHERE dataset_name = ?",
            (*values, cap.actor, cap.reason, cap.updated_at, cap.dataset),
        )

    def dataset_charges(self, dataset: str) -> list[PrivacyLoss]:
        """What a dataset's ledgers spent or hold, charge by charge, in each ledger's unit:
        imported spends and every reservation not released."""
        rows = self._tx.fetchall(
            "SELECT l.definition, r.epsilon, r.delta, r.rho FROM reservations r "
            "JOIN ledgers l ON l.id = r.ledger_id WHERE l.dataset_name = ? AND r.state <> ? "
            "UNION ALL "
            "SELECT l.definition, e.epsilon, e.delta, e.rho FROM ledger_entries e "
            "JOIN ledgers l ON l.id = e.ledger_id WHERE l.dataset_name = ? AND e.kind = ?",
            (dataset, ReservationState.RELEASED.value, dataset, EntryKind.IMPORTED_SPEND.value),
        )
        return [_loss(PrivacyDefinition(row["definition"]), row) for row in rows]

    def set_capped(self, ledger_ids: Sequence[str], capped: bool) -> None:
        for ledger_id in ledger_ids:
            self._tx.execute("UPDATE ledgers SET capped = ? WHERE id = ?", (int(capped), ledger_id))

    # ledgers

    def find_ledger(
        self, user: str, dataset: str, *, for_update: bool = False
    ) -> LedgerBalance | None:
        row = self._tx.fetchone(
            f"SELECT {_LEDGER_COLUMNS} FROM ledgers WHERE user_name = ? AND dataset_name = ?"
            + (self._lock if for_update else ""),
            (user, dataset),
        )
        return _balance(row) if row else None

    def get_ledger(self, ledger_id: str, *, for_update: bool = False) -> LedgerBalance | None:
        row = self._tx.fetchone(
            f"SELECT {_LEDGER_COLUMNS} FROM ledgers WHERE id = ?"
            + (self._lock if for_update else ""),
            (ledger_id,),
        )
        return _balance(row) if row else None

    def user_ledgers(self, user: str, *, for_update: bool = False) -> list[LedgerBalance]:
        rows = self._tx.fetchall(
            f"SELECT {_LEDGER_COLUMNS} FROM ledgers WHERE user_name = ? ORDER BY dataset_name"
            + (self._lock if for_update else ""),
            (user,),
        )
        return [_balance(row) for row in rows]

    def dataset_ledgers(self, dataset: str, *, for_update: bool = False) -> list[LedgerBalance]:
        rows = self._tx.fetchall(
            f"SELECT {_LEDGER_COLUMNS} FROM ledgers WHERE dataset_name = ? ORDER BY id"
            + (self._lock if for_update else ""),
            (dataset,),
        )
        return [_balance(row) for row in rows]

    def count_ledgers(self) -> int:
        row = self._tx.fetchone("SELECT COUNT(*) AS n FROM ledgers")
        return int(row["n"]) if row else 0

    def insert_ledger(self, balance: LedgerBalance, *, request_id: str | None) -> None:
        values = [
            balance.ledger_id,
            balance.user,
            balance.dataset,
            balance.definition.value,
            *_amounts(balance.allocation),
            *_amounts(balance.spent),
            *_amounts(balance.reserved),
            balance.entry_count,
            balance.head_hash,
            int(balance.frozen),
            int(balance.capped),
            balance.created_at,
            request_id,
        ]
        self._tx.execute(
            f"INSERT INTO ledgers ({_LEDGER_COLUMNS}, request_id) "
            f"VALUES {_placeholders(len(values))}",
            values,
        )

    def lock_for_reservation(
        self, user: str, dataset: str, query_id: str
    ) -> tuple[LedgerBalance | None, Reservation | None]:
        """A ledger row, locked, and the reservation that already holds `query_id` (of any
        ledger), in one statement."""
        row = self._tx.fetchone(
            f"SELECT {_L_COLUMNS}, {_R_COLUMNS}, rl.user_name AS rl_user_name, "
            "rl.dataset_name AS rl_dataset_name, rl.definition AS rl_definition "
            "FROM ledgers l LEFT JOIN reservations r ON r.query_id = ? "
            "LEFT JOIN ledgers rl ON rl.id = r.ledger_id "
            "WHERE l.user_name = ? AND l.dataset_name = ?"
            + (" FOR UPDATE OF l" if self._postgres else ""),
            (query_id, user, dataset),
        )
        if row is None:
            return None, None
        existing = _reservation(row) if row["r_query_id"] is not None else None
        return _balance(row), existing

    def lock_reservation(self, query_id: str) -> tuple[LedgerBalance, Reservation] | None:
        """A reservation and its ledger, both rows locked, in one statement (re-read at their
        newest committed versions once the locks are ours)."""
        row = self._tx.fetchone(
            f"SELECT {_L_COLUMNS}, {_R_COLUMNS}, l.user_name AS rl_user_name, "
            "l.dataset_name AS rl_dataset_name, l.definition AS rl_definition "
            "FROM reservations r JOIN ledgers l ON l.id = r.ledger_id WHERE r.query_id = ?"
            + self._lock,
            (query_id,),
        )
        if row is None:
            return None
        return _balance(row), _reservation(row)

    # writes: entries, the reservation, the dataset's use and the ledger row, together

    def write(
        self,
        ledger: LedgerBalance,
        entries: Sequence[LedgerEntry],
        *,
        new_reservation: Reservation | None = None,
        reservation_update: Reservation | None = None,
        dataset: DatasetCap | None = None,
    ) -> None:
        """Append `entries` and write the ledger row's new balances and chain head (the row is
        locked by this transaction), with the reservation and the dataset's use they change."""
        statements: list[tuple[str, list[Any]]] = []
        if entries:
            values = [value for entry in entries for value in _entry_values(entry)]
            row = _placeholders(len(_ENTRY_FIELDS))
            statements.append((_INSERT_ENTRIES + ", ".join([row] * len(entries)), values))
        if new_reservation is not None:
            statements.append((_INSERT_RESERVATION, _reservation_values(new_reservation)))
        if reservation_update is not None:
            statements.append(
                (
                    _UPDATE_RESERVATION,
                    [
                        reservation_update.state.value,
                        reservation_update.updated_at,
                        reservation_update.query_id,
                    ],
                )
            )
        if dataset is not None and dataset.used is not None:
            statements.append((_UPDATE_USED, [*_amounts(dataset.used), dataset.dataset]))
        statements.append((_UPDATE_LEDGER, _ledger_update_values(ledger)))
        if not self._postgres:
            for sql, params in statements:
                self._tx.execute(sql, params)
            return
        # One round trip: every change but the last as a data-modifying CTE.
        *changes, (last_sql, last_params) = statements
        ctes = ", ".join(f"w{index} AS ({sql})" for index, (sql, _) in enumerate(changes))
        params = [value for _, values in changes for value in values] + last_params
        self._tx.execute((f"WITH {ctes} " if ctes else "") + last_sql, params)

    # entries (append-only)

    def entries(
        self,
        ledger_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        kind: EntryKind | None = None,
    ) -> list[LedgerEntry]:
        """A ledger's entries after `after_seq`, in order (at most `limit`, only of `kind`)."""
        params: list[Any] = [ledger_id, after_seq]
        where = ""
        if kind is not None:
            where, params = " AND kind = ?", [*params, kind.value]
        rows = self._tx.fetchall(
            f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries WHERE ledger_id = ? AND seq > ?{where} "
            "ORDER BY seq" + (f" LIMIT {int(limit)}" if limit is not None else ""),
            params,
        )
        return [_entry(row) for row in rows]

    # reservations

    def find_reservation(self, query_id: str) -> Reservation | None:
        row = self._tx.fetchone(f"{_RESERVATION_SELECT} WHERE r.query_id = ?", (query_id,))
        return _reservation(row) if row else None

    def expired_reservations(self, now: str, limit: int) -> list[str]:
        rows = self._tx.fetchall(
            f"SELECT query_id FROM reservations WHERE state IN ({_open_states()}) "
            "AND expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now, limit),
        )
        return [row["query_id"] for row in rows]

    # first answers of requests with an id

    def find_request(self, request_id: str) -> StoredRequest | None:
        row = self._tx.fetchone(
            "SELECT request_id, method, fingerprint, response FROM budget_requests "
            "WHERE request_id = ?",
            (request_id,),
        )
        if row is None:
            return None
        return StoredRequest(row["request_id"], row["method"], row["fingerprint"], row["response"])

    def insert_request(self, request: StoredRequest, now: str) -> None:
        self._tx.execute(
            "INSERT INTO budget_requests (request_id, method, fingerprint, response, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (request.request_id, request.method, request.fingerprint, request.response, now),
        )

    def forget_requests(self, before: str) -> int:
        """Drop the first answers stored before `before`; returns how many."""
        return self._tx.execute(
            "DELETE FROM budget_requests WHERE created_at < ?", (before,)
        ).rowcount

    # streams for verification: raw rows, decimals as text, in (ledger_id, ...) order

    def _stream(
        self, name: str, sql: str, params: Sequence[Any], *, tuples: bool = False
    ) -> Iterator[Any]:
        """The rows of `sql` in batches (a server-side cursor on PostgreSQL), as dicts, or as
        tuples in the order of the SELECT list when `tuples` is set (faster to read)."""
        if self._postgres:
            self._tx.execute(f"DECLARE {name} NO SCROLL CURSOR FOR {sql}", params)

            def fetch() -> list[Any]:
                cursor: Any = self._tx.execute(f"FETCH FORWARD {_STREAM_BATCH} FROM {name}")
                if tuples:
                    cursor.row_factory = _tuple_rows
                return list(cursor.fetchall())

            # The next batch is fetched while this one is checked: PostgreSQL reads and sends it
            # on another core. (psycopg serialises the connection's use across threads. SQLite
            # builds its rows under the GIL, so there prefetching only adds a thread.)
            with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as prefetch:
                batch = fetch()
                while batch:
                    following = prefetch.submit(fetch)
                    yield from batch
                    batch = following.result()
            self._tx.execute(f"CLOSE {name}")
            return
        cursor = self._tx.execute(sql, params)
        if tuples:
            cursor.row_factory = None
        while True:
            batch = cursor.fetchmany(_STREAM_BATCH)
            if not batch:
                return
            yield from batch

    def _text(self, column: str) -> str:
        return f"{column}::text AS {column.rsplit('.', 1)[-1]}" if self._postgres else column

    def stream_ledgers(self, ledger_id: str | None) -> Iterator[Row]:
        """Ledger rows by id, balances as decimal text."""
        columns = ", ".join(
            self._text(name) if name in _BALANCE_COLUMNS else name for name in _LEDGER_FIELDS
        )
        where, params = ("WHERE id = ? ", (ledger_id,)) if ledger_id else ("", ())
        return self._stream(
            "lomas_verify_ledgers", f"SELECT {columns} FROM ledgers {where}ORDER BY id", params
        )

    def stream_entries(self, ledger_id: str | None) -> Iterator[tuple[Any, ...]]:
        """Entry tuples in `_ENTRY_FIELDS` order, by (ledger_id, seq), amounts as text."""
        columns = ", ".join(
            self._text(name) if name in _COMPONENTS else name for name in _ENTRY_FIELDS
        )
        where, params = ("WHERE ledger_id = ? ", (ledger_id,)) if ledger_id else ("", ())
        return self._stream(
            "lomas_verify_entries",
            f"SELECT {columns} FROM ledger_entries {where}ORDER BY ledger_id, seq",
            params,
            tuples=True,
        )

    def stream_reservations(self, ledger_id: str | None) -> Iterator[tuple[Any, ...]]:
        """Reservation tuples in `_RESERVATION_FIELDS` order, by ledger_id, amounts as text."""
        columns = ", ".join(
            self._text(name) if name in _COMPONENTS else name for name in _RESERVATION_FIELDS
        )
        where, params = ("WHERE ledger_id = ? ", (ledger_id,)) if ledger_id else ("", ())
        return self._stream(
            "lomas_verify_reservations",
            f"SELECT {columns} FROM reservations {where}ORDER BY ledger_id, query_id",
            params,
            tuples=True,
        )


class LedgerStore:
    """The ledger tables in one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_schema(
        self, *, reservation_ttl_seconds: int = DEFAULT_RESERVATION_TTL_SECONDS
    ) -> None:
        """Create the tables, indexes and append-only triggers (idempotent), and bring a database
        written by an earlier version up to date (new columns, entry kinds; reservations that had
        no expiry get one TTL after their creation)."""
        statements = schema(self.db.decimal_type)

        def work(tx: Transaction) -> None:
            if tx.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK_KEY,))
            for statement in statements:
                tx.execute(statement)
            _migrate(tx, reservation_ttl_seconds)
            tx.execute(_expiry_index())
            for statement in _triggers(tx.dialect):
                tx.execute(statement)

        self.db.run(work)

    def run(
        self,
        work: Callable[[LedgerSession], T],
        *,
        readonly: bool = False,
        pipelined: bool = False,
    ) -> T:
        """Run `work` in one transaction (re-run if it lost a race; see `Database.run`).

        `pipelined=True` suits the ledger's hot paths (lock, compute, write): none reads a
        rowcount, so their writes can travel with the COMMIT."""
        return self.db.run(
            lambda tx: work(LedgerSession(tx)), readonly=readonly, pipelined=pipelined
        )


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
    """Upgrade tables created by the first version of the ledger (no freeze, cap or expiry)."""
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
            f"CHECK (kind IN ({_kinds()}))"
        )
        return
    create = next(s for s in schema("TEXT") if "TABLE IF NOT EXISTS ledger_entries" in s)
    tx.execute(create.replace("ledger_entries (", "ledger_entries_v2 (", 1))
    tx.execute(
        f"INSERT INTO ledger_entries_v2 ({_ENTRY_COLUMNS}) SELECT {_ENTRY_COLUMNS} FROM ledger_entries"
    )
    tx.execute("DROP TABLE ledger_entries")
    tx.execute("ALTER TABLE ledger_entries_v2 RENAME TO ledger_entries")
