"""How long `ledger verify` takes on one ledger of 1,000,000 entries (aim: under 10 s).

Builds the ledger directly in a fresh database (PostgreSQL and/or SQLite): an allocation, then
reserve/commit pairs, with a valid hash chain, cached balances and reservation rows, exactly as the
ledger would have written them (bulk-loaded: COPY on PostgreSQL, one transaction on SQLite). Then
times `BudgetLedger.verify()`, the code behind `VerifyLedgers` and `lomas-admin ledger verify`,
and checks that it found nothing wrong.

    .venv/bin/python bench/budget_verify.py [--entries 1000000] [--store postgresql|sqlite|both]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg

from lomas_budget.journal import chain_hash, chain_prefix
from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import GENESIS_HASH, stamp
from lomas_budget.store import LedgerStore
from lomas_common.db import Database
from lomas_common.privacy import format_decimal
from lomas_testing.databases import fresh_postgres_url, sqlite_url

LEDGER_ID = "bench-ledger"
USER, DATASET, DEFINITION = "alice", "penguins", "approx_dp"
COST_EPSILON, COST_DELTA = Decimal("0.000001"), Decimal("0.000000000001")


@dataclass(frozen=True)
class LedgerRow:
    """The cached balances (epsilon, delta) and chain head of the ledger row."""

    allocation: tuple[Decimal, Decimal]
    spent: tuple[Decimal, Decimal]
    reserved: tuple[Decimal, Decimal]
    entry_count: int
    head_hash: str


def rows(
    entries: int,
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], LedgerRow]:
    """The entry rows, reservation rows and final ledger row values of a consistent ledger."""
    pairs = (entries - 1) // 2
    open_reservation = (entries - 1) % 2 == 1
    allocation_epsilon = COST_EPSILON * (pairs + 1) * 2
    allocation_delta = COST_DELTA * (pairs + 1) * 2
    start = datetime(2025, 1, 1, tzinfo=UTC)
    entry_rows: list[tuple[object, ...]] = []
    reservation_rows: list[tuple[object, ...]] = []
    prev = GENESIS_HASH
    cost = (format_decimal(COST_EPSILON), format_decimal(COST_DELTA), "0")

    def add(seq: int, kind: str, amount: tuple[str, str, str], query_id: str | None) -> None:
        nonlocal prev
        at = stamp(start + timedelta(microseconds=seq))
        digest = chain_hash(
            chain_prefix(LEDGER_ID, USER, DATASET, DEFINITION),
            seq,
            kind,
            *amount,
            query_id,
            "bench",
            "",
            at,
            prev,
        )
        entry_rows.append((LEDGER_ID, seq, kind, *amount, query_id, "bench", "", at, prev, digest))
        prev = digest

    add(
        1,
        "allocation",
        (format_decimal(allocation_epsilon), format_decimal(allocation_delta), "0"),
        None,
    )
    seq = 1
    for number in range(pairs + (1 if open_reservation else 0)):
        query_id = f"q{number:07d}"
        seq += 1
        add(seq, "reservation", cost, query_id)
        committed = number < pairs
        if committed:
            seq += 1
            add(seq, "commit", cost, query_id)
        at = stamp(start + timedelta(microseconds=seq))
        state = "committed" if committed else "reserved"
        reservation_rows.append((query_id, LEDGER_ID, *cost, state, "gateway", at, at, at))
    spent = pairs
    reserved = 1 if open_reservation else 0
    ledger_row = LedgerRow(
        allocation=(allocation_epsilon, allocation_delta),
        spent=(COST_EPSILON * spent, COST_DELTA * spent),
        reserved=(COST_EPSILON * reserved, COST_DELTA * reserved),
        entry_count=seq,
        head_hash=prev,
    )
    return entry_rows, reservation_rows, ledger_row


def ledger_values(ledger_row: LedgerRow) -> tuple[object, ...]:
    values: list[object] = [LEDGER_ID, USER, DATASET, DEFINITION]
    for epsilon, delta in (ledger_row.allocation, ledger_row.spent, ledger_row.reserved):
        values += [format_decimal(epsilon), format_decimal(delta), "0"]
    values += [
        ledger_row.entry_count,
        ledger_row.head_hash,
        0,
        0,
        None,
        stamp(datetime.now(UTC)),
    ]
    return tuple(values)


LEDGER_INSERT_COLUMNS = (
    "id, user_name, dataset_name, definition, allocation_epsilon, allocation_delta, allocation_rho, "
    "spent_epsilon, spent_delta, spent_rho, reserved_epsilon, reserved_delta, reserved_rho, "
    "entry_count, head_hash, frozen, capped, request_id, created_at"
)
ENTRY_COLUMNS = "ledger_id, seq, kind, epsilon, delta, rho, query_id, actor, reason, created_at, prev_hash, hash"
RESERVATION_COLUMNS = (
    "query_id, ledger_id, epsilon, delta, rho, state, owner, expires_at, created_at, updated_at"
)


def load_postgres(url: str, entries: int) -> None:
    entry_rows, reservation_rows, ledger_row = rows(entries)
    with psycopg.connect(url) as connection:
        connection.execute(
            f"INSERT INTO ledgers ({LEDGER_INSERT_COLUMNS}) VALUES ({', '.join(['%s'] * 19)})",
            ledger_values(ledger_row),
        )
        cursor = connection.cursor()
        with cursor.copy(f"COPY ledger_entries ({ENTRY_COLUMNS}) FROM STDIN") as copy:
            for row in entry_rows:
                copy.write_row(row)
        with cursor.copy(f"COPY reservations ({RESERVATION_COLUMNS}) FROM STDIN") as copy:
            for row in reservation_rows:
                copy.write_row(row)
        connection.execute("INSERT INTO ledger_users VALUES (%s, 0, '', '', '')", (USER,))
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")


def load_sqlite(path: Path, entries: int) -> None:
    entry_rows, reservation_rows, ledger_row = rows(entries)
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(
                f"INSERT INTO ledgers ({LEDGER_INSERT_COLUMNS}) VALUES ({', '.join('?' * 19)})",
                ledger_values(ledger_row),
            )
            connection.executemany(
                f"INSERT INTO ledger_entries ({ENTRY_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                entry_rows,
            )
            connection.executemany(
                f"INSERT INTO reservations ({RESERVATION_COLUMNS}) VALUES ({', '.join('?' * 10)})",
                reservation_rows,
            )
            connection.execute("INSERT INTO ledger_users VALUES (?, 0, '', '', '')", (USER,))
    finally:
        connection.close()


def databases(store: str, directory: Path) -> Iterator[tuple[str, str]]:
    if store in ("postgresql", "both"):
        url, drop = fresh_postgres_url("lomas_bench_verify")
        try:
            yield "postgresql", url
        finally:
            drop()
    if store in ("sqlite", "both"):
        yield "sqlite", sqlite_url(directory / "budget.db")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3, help="verifications to time (best kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for name, url in databases(args.store, Path(directory)):
            db = Database.from_url(url)
            try:
                LedgerStore(db).create_schema()
                started = time.perf_counter()
                if name == "postgresql":
                    load_postgres(url, args.entries)
                else:
                    load_sqlite(Path(url.removeprefix("sqlite:///")), args.entries)
                built = time.perf_counter() - started
                ledger = BudgetLedger(LedgerStore(db))
                timings = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    report = ledger.verify()
                    timings.append(time.perf_counter() - started)
                    assert report.problems == (), report.problems[:5]
                    assert report.entries_checked == args.entries, report.entries_checked
                best = min(timings)
                print(
                    f"{name:10s} verify {report.entries_checked:,} entries in one ledger: "
                    f"{best:.2f} s best of {args.repeat} ({report.entries_checked / best:,.0f} "
                    f"entries/s; all: {', '.join(f'{t:.2f}' for t in timings)} s; "
                    f"built in {built:.1f} s)",
                    flush=True,
                )
            finally:
                db.close()


if __name__ == "__main__":
    main()
