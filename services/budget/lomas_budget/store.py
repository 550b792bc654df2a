"""SQL storage of the budget ledger (SQLite or PostgreSQL through `lomas_common.db`): a session
per transaction (`LedgerSession`) and the store that runs them (`LedgerStore`).

The tables are described in `lomas_budget.schema`, their columns and row mapping in
`lomas_budget.tables`. This module knows the value model (`lomas_budget.model`) and nothing of the
service that uses it.

Round trips: on PostgreSQL every ledger change is one locking SELECT and one statement that writes
the entries, the reservation, the dataset's use and the ledger row together (data-modifying CTEs),
so a reservation or a commit costs BEGIN, SELECT, write, COMMIT. SQLite runs the same changes as
separate statements (in-process calls, under the database write lock).

Lists page by keyset: `WHERE key > :after ORDER BY key LIMIT n + 1`, never by offset and never by
loading all rows (`user_ledgers_page`, `entries`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from lomas_budget import tables
from lomas_budget.model import (
    DEFAULT_RESERVATION_TTL_SECONDS,
    DatasetCap,
    EntryKind,
    LedgerBalance,
    LedgerEntry,
    Reservation,
    ReservationState,
    StoredRequest,
    UserState,
)
from lomas_budget.schema import create_schema
from lomas_common.db import Database, Row, Transaction
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss

T = TypeVar("T")

_STREAM_BATCH = 5000


@dataclass(frozen=True, slots=True)
class LedgerHead:
    """Where a ledger's chain stands: what a checkpoint pins (`lomas_budget.anchoring`)."""

    ledger_id: str
    user: str
    dataset: str
    entry_count: int
    head_hash: str


def _tuple_rows(cursor: Any) -> Any:
    """A psycopg row factory: rows as plain tuples (what `psycopg.rows.tuple_row` does)."""
    return tuple


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
            f"INSERT INTO {table} ({columns}) VALUES {tables.placeholders(len(values))} "
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
        return tables.user(row)

    def get_user(self, user: str) -> UserState:
        row = self._tx.fetchone(
            "SELECT user_name, frozen, actor, reason, updated_at FROM ledger_users "
            "WHERE user_name = ?",
            (user,),
        )
        return tables.user(row) if row else UserState(user, False, "", "", "")

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
            f"SELECT {tables.DATASET_COLUMNS} FROM ledger_datasets WHERE dataset_name = ?{self._lock}",
            (dataset,),
        )
        return tables.dataset(row) if row else DatasetCap(dataset, None, None)

    def get_dataset(self, dataset: str) -> DatasetCap:
        row = self._tx.fetchone(
            f"SELECT {tables.DATASET_COLUMNS} FROM ledger_datasets WHERE dataset_name = ?",
            (dataset,),
        )
        return tables.dataset(row) if row else DatasetCap(dataset, None, None)

    def capped_datasets(self) -> dict[str, DatasetCap]:
        rows = self._tx.fetchall(
            f"SELECT {tables.DATASET_COLUMNS} FROM ledger_datasets WHERE cap_definition IS NOT NULL"
        )
        return {row["dataset_name"]: tables.dataset(row) for row in rows}

    def update_dataset(self, cap: DatasetCap) -> None:
        if cap.cap is None or cap.used is None:
            values: list[Any] = [None] * 7
        else:
            values = [cap.cap.definition.value, *tables.amounts(cap.cap), *tables.amounts(cap.used)]
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
        return [tables.loss(PrivacyDefinition(row["definition"]), row) for row in rows]

    def set_capped(self, ledger_ids: Sequence[str], capped: bool) -> None:
        for ledger_id in ledger_ids:
            self._tx.execute("UPDATE ledgers SET capped = ? WHERE id = ?", (int(capped), ledger_id))

    # ledgers

    def find_ledger(
        self, user: str, dataset: str, *, for_update: bool = False
    ) -> LedgerBalance | None:
        row = self._tx.fetchone(
            f"SELECT {tables.LEDGER_COLUMNS} FROM ledgers WHERE user_name = ? AND dataset_name = ?"
            + (self._lock if for_update else ""),
            (user, dataset),
        )
        return tables.balance(row) if row else None

    def get_ledger(self, ledger_id: str, *, for_update: bool = False) -> LedgerBalance | None:
        row = self._tx.fetchone(
            f"SELECT {tables.LEDGER_COLUMNS} FROM ledgers WHERE id = ?"
            + (self._lock if for_update else ""),
            (ledger_id,),
        )
        return tables.balance(row) if row else None

    def user_ledgers(self, user: str, *, for_update: bool = False) -> list[LedgerBalance]:
        rows = self._tx.fetchall(
            f"SELECT {tables.LEDGER_COLUMNS} FROM ledgers WHERE user_name = ? ORDER BY dataset_name"
            + (self._lock if for_update else ""),
            (user,),
        )
        return [tables.balance(row) for row in rows]

    def user_ledgers_page(
        self, user: str, *, after_dataset: str | None, limit: int
    ) -> list[LedgerBalance]:
        """At most `limit` of a user's ledgers, by dataset, after `after_dataset` (from the first
        when None): a keyset page, so ledgers opened meanwhile never shift it."""
        after = "" if after_dataset is None else " AND dataset_name > ?"
        params: list[Any] = [user] if after_dataset is None else [user, after_dataset]
        rows = self._tx.fetchall(
            f"SELECT {tables.LEDGER_COLUMNS} FROM ledgers WHERE user_name = ?{after} "
            "ORDER BY dataset_name LIMIT ?",
            [*params, int(limit)],
        )
        return [tables.balance(row) for row in rows]

    def dataset_ledgers(self, dataset: str, *, for_update: bool = False) -> list[LedgerBalance]:
        rows = self._tx.fetchall(
            f"SELECT {tables.LEDGER_COLUMNS} FROM ledgers WHERE dataset_name = ? ORDER BY id"
            + (self._lock if for_update else ""),
            (dataset,),
        )
        return [tables.balance(row) for row in rows]

    def count_ledgers(self) -> int:
        row = self._tx.fetchone("SELECT COUNT(*) AS n FROM ledgers")
        return int(row["n"]) if row else 0

    def insert_ledger(self, balance: LedgerBalance, *, request_id: str | None) -> None:
        values = tables.ledger_insert_values(balance, request_id)
        self._tx.execute(
            f"INSERT INTO ledgers ({tables.LEDGER_COLUMNS}, request_id) "
            f"VALUES {tables.placeholders(len(values))}",
            values,
        )

    def lock_for_reservation(
        self, user: str, dataset: str, query_id: str
    ) -> tuple[LedgerBalance | None, Reservation | None]:
        """A ledger row, locked, and the reservation that already holds `query_id` (of any
        ledger), in one statement."""
        row = self._tx.fetchone(
            f"SELECT {tables.L_COLUMNS}, {tables.reservation_columns('rl')} "
            "FROM ledgers l LEFT JOIN reservations r ON r.query_id = ? "
            "LEFT JOIN ledgers rl ON rl.id = r.ledger_id "
            "WHERE l.user_name = ? AND l.dataset_name = ?"
            + (" FOR UPDATE OF l" if self._postgres else ""),
            (query_id, user, dataset),
        )
        if row is None:
            return None, None
        existing = tables.reservation(row) if row["r_query_id"] is not None else None
        return tables.balance(row), existing

    def lock_reservation(self, query_id: str) -> tuple[LedgerBalance, Reservation] | None:
        """A reservation and its ledger, both rows locked, in one statement (re-read at their
        newest committed versions once the locks are ours)."""
        row = self._tx.fetchone(
            f"SELECT {tables.L_COLUMNS}, {tables.reservation_columns('l')} "
            "FROM reservations r JOIN ledgers l ON l.id = r.ledger_id WHERE r.query_id = ?"
            + self._lock,
            (query_id,),
        )
        if row is None:
            return None
        return tables.balance(row), tables.reservation(row)

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
            values = [value for entry in entries for value in tables.entry_values(entry)]
            row = tables.placeholders(len(tables.ENTRY_FIELDS))
            statements.append((tables.INSERT_ENTRIES + ", ".join([row] * len(entries)), values))
        if new_reservation is not None:
            statements.append(
                (tables.INSERT_RESERVATION, tables.reservation_values(new_reservation))
            )
        if reservation_update is not None:
            statements.append(
                (
                    tables.UPDATE_RESERVATION,
                    [
                        reservation_update.state.value,
                        reservation_update.updated_at,
                        reservation_update.query_id,
                    ],
                )
            )
        if dataset is not None and dataset.used is not None:
            statements.append(
                (tables.UPDATE_USED, [*tables.amounts(dataset.used), dataset.dataset])
            )
        statements.append((tables.UPDATE_LEDGER, tables.ledger_update_values(ledger)))
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
            f"SELECT {tables.ENTRY_COLUMNS} FROM ledger_entries WHERE ledger_id = ? AND seq > ?{where} "
            "ORDER BY seq" + (f" LIMIT {int(limit)}" if limit is not None else ""),
            params,
        )
        return [tables.entry(row) for row in rows]

    def entry_hash(self, ledger_id: str, seq: int) -> str | None:
        """The stored hash of one entry (None when there is no such entry)."""
        row = self._tx.fetchone(
            "SELECT hash FROM ledger_entries WHERE ledger_id = ? AND seq = ?", (ledger_id, seq)
        )
        return str(row["hash"]) if row else None

    def ledger_heads(self) -> list[LedgerHead]:
        """Every ledger that has entries, with the head of its chain, by id."""
        rows = self._tx.fetchall(
            "SELECT id, user_name, dataset_name, entry_count, head_hash FROM ledgers "
            "WHERE entry_count > 0 ORDER BY id"
        )
        return [
            LedgerHead(
                row["id"],
                row["user_name"],
                row["dataset_name"],
                int(row["entry_count"]),
                row["head_hash"],
            )
            for row in rows
        ]

    # reservations

    def find_reservation(self, query_id: str) -> Reservation | None:
        row = self._tx.fetchone(f"{tables.RESERVATION_SELECT} WHERE r.query_id = ?", (query_id,))
        return tables.reservation(row) if row else None

    def expired_reservations(self, now: str, limit: int) -> list[str]:
        rows = self._tx.fetchall(
            f"SELECT query_id FROM reservations WHERE state IN ({tables.open_states_list()}) "
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
                fetched: Any = self._tx.execute(f"FETCH FORWARD {_STREAM_BATCH} FROM {name}")
                if tuples:
                    fetched.row_factory = _tuple_rows
                return list(fetched.fetchall())

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
        # sqlite3's cursor: the Cursor protocol of lomas_common.db does not declare these.
        cursor: Any = self._tx.execute(sql, params)
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
            self._text(name) if name in tables.BALANCE_COLUMNS else name
            for name in tables.LEDGER_FIELDS
        )
        where, params = ("WHERE id = ? ", (ledger_id,)) if ledger_id else ("", ())
        return self._stream(
            "lomas_verify_ledgers", f"SELECT {columns} FROM ledgers {where}ORDER BY id", params
        )

    def stream_entries(self, ledger_id: str | None) -> Iterator[tuple[Any, ...]]:
        """Entry tuples in `tables.ENTRY_FIELDS` order, by (ledger_id, seq), amounts as text."""
        columns = ", ".join(
            self._text(name) if name in tables.COMPONENTS else name for name in tables.ENTRY_FIELDS
        )
        where, params = ("WHERE ledger_id = ? ", (ledger_id,)) if ledger_id else ("", ())
        return self._stream(
            "lomas_verify_entries",
            f"SELECT {columns} FROM ledger_entries {where}ORDER BY ledger_id, seq",
            params,
            tuples=True,
        )

    def stream_reservations(self, ledger_id: str | None) -> Iterator[tuple[Any, ...]]:
        """Reservation tuples in `tables.RESERVATION_FIELDS` order, by ledger_id, amounts as text."""
        columns = ", ".join(
            self._text(name) if name in tables.COMPONENTS else name
            for name in tables.RESERVATION_FIELDS
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
        written by an earlier version up to date (see `lomas_budget.schema`)."""
        decimal_type = self.db.decimal_type
        self.db.run(lambda tx: create_schema(tx, decimal_type, reservation_ttl_seconds))

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


__all__ = ["LedgerHead", "LedgerSession", "LedgerStore"]
