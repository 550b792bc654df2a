"""`verify_ledger` / `verify_all` detect rows changed behind the ledger's back (direct SQL)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from lomas_budget.ledger import BudgetLedger, LedgerBalance
from lomas_common.db import Database
from lomas_common.privacy import PrivacyLoss


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


def tamper(database: Database, sql: str, params: tuple[object, ...]) -> None:
    with database.transaction() as tx:
        assert tx.execute(sql, params).rowcount == 1


def test_changed_entry_amount_is_reported(
    ledger: BudgetLedger, database: Database, history: LedgerBalance
) -> None:
    tamper(
        database,
        "UPDATE ledger_entries SET epsilon = ? WHERE ledger_id = ? AND seq = ?",
        ("0.5", history.ledger_id, 5),
    )
    problems = ledger.verify_ledger(history.ledger_id)
    assert f"ledger {history.ledger_id} entry 5: hash mismatch (entry altered)" in problems
    assert f"ledger {history.ledger_id}: cached spent epsilon 3 but entries give 1.5" in problems
    assert ledger.verify_all() == problems  # bob's ledger is still fine


def test_changed_entry_text_field_is_reported(
    ledger: BudgetLedger, database: Database, history: LedgerBalance
) -> None:
    tamper(
        database,
        "UPDATE ledger_entries SET actor = ? WHERE ledger_id = ? AND seq = ?",
        ("someone else", history.ledger_id, 1),
    )
    assert ledger.verify_ledger(history.ledger_id) == [
        f"ledger {history.ledger_id} entry 1: hash mismatch (entry altered)"
    ]


def test_rehashed_entry_breaks_the_chain(
    ledger: BudgetLedger, database: Database, history: LedgerBalance
) -> None:
    tamper(
        database,
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
    ledger: BudgetLedger, database: Database, history: LedgerBalance
) -> None:
    tamper(
        database,
        "DELETE FROM ledger_entries WHERE ledger_id = ? AND seq = ?",
        (history.ledger_id, 6),
    )
    problems = ledger.verify_ledger(history.ledger_id)
    prefix = f"ledger {history.ledger_id}"
    assert f"{prefix}: entry count 6 but 5 entries stored" in problems
    assert f"{prefix}: head hash does not match the last entry" in problems
    assert f"{prefix}: cached reserved epsilon 1 but entries give 0" in problems


def test_changed_cached_balance_is_reported(
    ledger: BudgetLedger, database: Database, history: LedgerBalance
) -> None:
    tamper(
        database,
        "UPDATE ledgers SET allocation_epsilon = ? WHERE id = ?",
        ("100", history.ledger_id),
    )
    assert ledger.verify_ledger(history.ledger_id) == [
        f"ledger {history.ledger_id}: cached allocation epsilon 100 but entries give 10"
    ]


def test_changed_ledger_owner_breaks_every_hash(
    ledger: BudgetLedger, database: Database, history: LedgerBalance
) -> None:
    tamper(
        database,
        "UPDATE ledgers SET user_name = ? WHERE id = ?",
        ("mallory", history.ledger_id),
    )
    problems = ledger.verify_ledger(history.ledger_id)
    assert [p for p in problems if "hash mismatch" in p] == [
        f"ledger {history.ledger_id} entry {seq}: hash mismatch (entry altered)"
        for seq in range(1, 7)
    ]


def test_changed_reservation_state_is_reported(
    ledger: BudgetLedger, database: Database, history: LedgerBalance
) -> None:
    tamper(
        database,
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
