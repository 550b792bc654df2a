"""`verify_ledger` / `verify_all` detect rows changed behind the ledger's back (direct SQL)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal as D

import pytest

from lomas_budget.journal import chain_hash, chain_prefix
from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import LedgerBalance
from lomas_budget.store import LedgerStore
from lomas_common.db import Database
from lomas_common.privacy import PrivacyLoss, format_decimal
from lomas_testing.databases import fresh_postgres_url


@pytest.fixture
def history(ledger: BudgetLedger) -> LedgerBalance:
    """A ledger with 6 entries: allocation, imported, reservation q1, access q1, commit q1,
    reservation q2."""
    balance = ledger.open_ledger(
        "alice",
        "penguins",
        PrivacyLoss.approx_dp(D(10), D("0.001")),
        PrivacyLoss.approx_dp(D(1), D(0)),
        "admin",
    )
    ledger.reserve("q1", "alice", "penguins", PrivacyLoss.approx_dp(D(2), D("0.0001")), "gateway")
    ledger.mark_accessed("q1")
    ledger.commit("q1")
    ledger.reserve("q2", "alice", "penguins", PrivacyLoss.approx_dp(D(1), D(0)), "gateway")
    ledger.open_ledger("bob", "penguins", PrivacyLoss.pure_dp(D(1)), None, "admin")
    assert ledger.verify_ledger(balance.ledger_id) == []
    assert ledger.verify_all() == []
    return balance


@pytest.fixture
def tamper_one(tamper: Callable[..., int]) -> Callable[..., None]:
    def run(sql: str, params: tuple[object, ...]) -> None:
        assert tamper(sql, params) == 1

    return run


def test_changed_entry_amount_is_reported(
    ledger: BudgetLedger, tamper_one: Callable[..., None], history: LedgerBalance
) -> None:
    tamper_one(
        "UPDATE ledger_entries SET epsilon = ? WHERE ledger_id = ? AND seq = ?",
        ("0.5", history.ledger_id, 5),
    )
    problems = ledger.verify_ledger(history.ledger_id)
    assert f"ledger {history.ledger_id} entry 5: hash mismatch (entry altered)" in problems
    assert f"ledger {history.ledger_id}: cached spent epsilon 3 but entries give 1.5" in problems
    assert ledger.verify_all() == problems  # bob's ledger is still fine


def test_changed_entry_text_field_is_reported(
    ledger: BudgetLedger, tamper_one: Callable[..., None], history: LedgerBalance
) -> None:
    tamper_one(
        "UPDATE ledger_entries SET actor = ? WHERE ledger_id = ? AND seq = ?",
        ("someone else", history.ledger_id, 1),
    )
    assert ledger.verify_ledger(history.ledger_id) == [
        f"ledger {history.ledger_id} entry 1: hash mismatch (entry altered)"
    ]


def test_rehashed_entry_breaks_the_chain(
    ledger: BudgetLedger, tamper_one: Callable[..., None], history: LedgerBalance
) -> None:
    tamper_one(
        "UPDATE ledger_entries SET hash = ? WHERE ledger_id = ? AND seq = ?",
        ("f" * 64, history.ledger_id, 3),
    )
    problems = ledger.verify_ledger(history.ledger_id)
    assert f"ledger {history.ledger_id} entry 3: hash mismatch (entry altered)" in problems
    assert (
        f"ledger {history.ledger_id} entry 4: prev_hash does not match the previous entry's hash"
        in problems
    )


def test_deleted_last_entry_is_reported(
    ledger: BudgetLedger, tamper_one: Callable[..., None], history: LedgerBalance
) -> None:
    tamper_one(
        "DELETE FROM ledger_entries WHERE ledger_id = ? AND seq = ?",
        (history.ledger_id, 6),
    )
    problems = ledger.verify_ledger(history.ledger_id)
    prefix = f"ledger {history.ledger_id}"
    assert f"{prefix}: entry count 6 but 5 entries stored" in problems
    assert f"{prefix}: head hash does not match the last entry" in problems
    assert f"{prefix}: cached reserved epsilon 1 but entries give 0" in problems


def test_changed_cached_balance_is_reported(
    ledger: BudgetLedger, tamper_one: Callable[..., None], history: LedgerBalance
) -> None:
    tamper_one(
        "UPDATE ledgers SET allocation_epsilon = ? WHERE id = ?",
        ("100", history.ledger_id),
    )
    assert ledger.verify_ledger(history.ledger_id) == [
        f"ledger {history.ledger_id}: cached allocation epsilon 100 but entries give 10"
    ]


def test_changed_ledger_owner_breaks_every_hash(
    ledger: BudgetLedger, tamper_one: Callable[..., None], history: LedgerBalance
) -> None:
    tamper_one(
        "UPDATE ledgers SET user_name = ? WHERE id = ?",
        ("mallory", history.ledger_id),
    )
    problems = ledger.verify_ledger(history.ledger_id)
    assert [p for p in problems if "hash mismatch" in p] == [
        f"ledger {history.ledger_id} entry {seq}: hash mismatch (entry altered)"
        for seq in range(1, 7)
    ]


def test_changed_reservation_state_is_reported(
    ledger: BudgetLedger, tamper_one: Callable[..., None], history: LedgerBalance
) -> None:
    tamper_one(
        "UPDATE reservations SET state = ? WHERE query_id = ?",
        ("released", "q2"),
    )
    prefix = f"ledger {history.ledger_id}"
    assert ledger.verify_ledger(history.ledger_id) == [
        f"{prefix} reservation q2: state released but entries give reserved",
        f"{prefix}: open reservations do not add up to the reserved balance",
    ]


def test_unknown_ledger_is_reported(ledger: BudgetLedger) -> None:
    assert ledger.verify_ledger("nope") == ["ledger nope: not found"]


# --- the database refuses changes to entries ------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_entries SET epsilon = '0.5' WHERE seq = 5",
        "DELETE FROM ledger_entries WHERE seq = 6",
    ],
)
def test_entries_are_append_only_in_the_database(
    ledger: BudgetLedger, database: Database, history: LedgerBalance, sql: str
) -> None:
    with pytest.raises(Exception, match="append-only"), database.transaction() as tx:
        tx.execute(sql)
    assert ledger.verify_all() == []


def test_entries_cannot_be_truncated_on_postgresql() -> None:
    url, drop = fresh_postgres_url("lomas_budget_test")
    database = Database.from_url(url)
    try:
        ledger = BudgetLedger(LedgerStore(database))
        LedgerStore(database).create_schema()
        ledger.open_ledger("alice", "penguins", PrivacyLoss.pure_dp(D(1)), None, "admin")
        with pytest.raises(Exception, match="append-only"), database.transaction() as tx:
            tx.execute("TRUNCATE ledger_entries CASCADE")
        assert ledger.verify().entries_checked == 1
    finally:
        database.close()
        drop()


def test_restarting_restores_dropped_triggers(
    ledger: BudgetLedger, database: Database, tamper: Callable[..., int], history: LedgerBalance
) -> None:
    tamper("UPDATE ledger_entries SET actor = actor WHERE seq = 1")  # drops SQLite's triggers
    LedgerStore(database).create_schema()
    with pytest.raises(Exception, match="append-only"), database.transaction() as tx:
        tx.execute("DELETE FROM ledger_entries")


# --- what else verification finds -----------------------------------------------------------------


def test_a_deleted_reservation_row_is_reported(
    ledger: BudgetLedger, tamper: Callable[..., int], history: LedgerBalance
) -> None:
    assert tamper("DELETE FROM reservations WHERE query_id = ?", ("q2",)) == 1
    prefix = f"ledger {history.ledger_id}"
    assert ledger.verify_all() == [
        f"{prefix}: entries for query q2 have no reservation",
        f"{prefix}: open reservations do not add up to the reserved balance",
    ]


def test_a_changed_reservation_cost_is_reported(
    ledger: BudgetLedger, tamper: Callable[..., int], history: LedgerBalance
) -> None:
    tamper("UPDATE reservations SET epsilon = ? WHERE query_id = ?", ("0.5", "q2"))
    prefix = f"ledger {history.ledger_id}"
    assert ledger.verify_all() == [
        f"{prefix} reservation q2: cost does not match exactly one reservation entry",
        f"{prefix}: open reservations do not add up to the reserved balance",
    ]


def test_a_forged_chain_is_still_caught_by_the_accounting_checks(
    ledger: BudgetLedger, tamper: Callable[..., int], history: LedgerBalance
) -> None:
    """Someone who rewrites the commit of q1 to charge less and recomputes every hash, the
    head and the cached spend leaves a chain that hashes right, but a commit that does not match
    its reservation."""
    _, entries, _ = ledger.list_entries("alice", "penguins")
    prev = entries[3].hash
    for entry in entries[4:]:
        epsilon = "0.5" if entry.seq == 5 else format_decimal(entry.epsilon)
        digest = chain_hash(
            chain_prefix(history.ledger_id, "alice", "penguins", "approx_dp"),
            entry.seq,
            entry.kind.value,
            epsilon,
            format_decimal(entry.delta),
            format_decimal(entry.rho),
            entry.query_id,
            entry.actor,
            entry.reason,
            entry.created_at,
            prev,
        )
        tamper(
            "UPDATE ledger_entries SET epsilon = ?, prev_hash = ?, hash = ? "
            "WHERE ledger_id = ? AND seq = ?",
            (epsilon, prev, digest, history.ledger_id, entry.seq),
        )
        prev = digest
    tamper(
        "UPDATE ledgers SET spent_epsilon = ?, reserved_epsilon = ?, head_hash = ? WHERE id = ?",
        ("1.5", "2.5", prev, history.ledger_id),
    )
    prefix = f"ledger {history.ledger_id}"
    assert ledger.verify_all() == [
        f"{prefix} entry 5: commit of query q1 for another amount than reserved",
        f"{prefix} reservation q1: state committed but entries give no valid state",
        f"{prefix}: open reservations do not add up to the reserved balance",
    ]


def test_a_cleared_freeze_is_reported(
    ledger: BudgetLedger, tamper: Callable[..., int], history: LedgerBalance
) -> None:
    ledger.freeze_user("alice", "admin", "investigation")
    tamper("UPDATE ledgers SET frozen = 0 WHERE id = ?", (history.ledger_id,))
    prefix = f"ledger {history.ledger_id}"
    assert ledger.verify_all() == [
        f"{prefix}: frozen flag 0 but entries give 1",
    ]
    tamper("UPDATE ledger_users SET frozen = 0 WHERE user_name = ?", ("alice",))
    assert ledger.verify_all() == [
        f"{prefix}: frozen flag 0 but entries give 1",
        f"{prefix}: frozen 1 but its user's freeze disagrees",
    ]


def test_a_changed_cap_use_is_reported(
    ledger: BudgetLedger, tamper: Callable[..., int], history: LedgerBalance
) -> None:
    ledger.set_dataset_cap("penguins", PrivacyLoss.approx_dp(D(20), D("0.01")), "admin")
    assert ledger.verify_all() == []
    tamper("UPDATE ledger_datasets SET used_epsilon = ? WHERE dataset_name = ?", ("0", "penguins"))
    problems = ledger.verify_all()
    assert len(problems) == 1 and problems[0].startswith("dataset penguins: cached cap use")
    tamper("UPDATE ledgers SET capped = 0 WHERE id = ?", (history.ledger_id,))
    assert (
        f"ledger {history.ledger_id}: capped flag 0 but the dataset's cap disagrees"
        in ledger.verify_all()
    )


def test_entries_of_a_deleted_ledger_are_reported(
    ledger: BudgetLedger, tamper: Callable[..., int], history: LedgerBalance
) -> None:
    tamper("DELETE FROM ledgers WHERE id = ?", (history.ledger_id,))
    assert ledger.verify_all() == [f"ledger {history.ledger_id}: 8 rows but no ledger"]


def test_a_flood_of_problems_is_summarised(
    ledger: BudgetLedger, tamper: Callable[..., int], history: LedgerBalance
) -> None:
    for index in range(150):
        ledger.reserve(f"x{index}", "alice", "penguins", PrivacyLoss.approx_dp(D(0), D(0)), "gw")
    tamper("UPDATE ledgers SET user_name = ? WHERE id = ?", ("mallory", history.ledger_id))
    report = ledger.verify()
    assert report.entries_checked == 156 + 1  # bob's single entry
    assert len(report.problems) == 101
    assert report.problems[-1].endswith("more problems not shown")
