"""The worker's cost re-check: MarkReservationAccessed with the cost of what is about to run, on
SQLite and PostgreSQL. A cost that differs from the reservation is refused and writes nothing."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import ReservationState
from lomas_common.errors import Code, FailedPrecondition
from lomas_common.privacy import PrivacyLoss

ALICE, PENGUINS = "alice", "penguins"


def approx(epsilon: str, delta: str) -> PrivacyLoss:
    return PrivacyLoss.approx_dp(D(epsilon), D(delta))


def snapshot(ledger: BudgetLedger) -> tuple[object, ...]:
    """Everything a refused call must leave as it was: balance, entry chain, reservation."""
    balance, entries, _ = ledger.list_entries(ALICE, PENGUINS, limit=1000)
    return balance, tuple(entries), ledger.get_reservation("q1")


def refused_as_mismatch(
    ledger: BudgetLedger, expected: PrivacyLoss, request_id: str | None = None
) -> None:
    with pytest.raises(FailedPrecondition) as error:
        ledger.mark_accessed("q1", expected_cost=expected, request_id=request_id)
    assert (error.value.code, error.value.reason) == (Code.FAILED_PRECONDITION, "COST_MISMATCH")
    assert error.value.metadata == {"queryId": "q1"}


@pytest.mark.parametrize(
    "expected",
    [
        approx("3", "0"),  # more than reserved: the comment trick, a stale or tampered gateway
        approx("0.5", "0"),  # less
        approx("1", "0.000001"),  # another delta
        PrivacyLoss.rho_zcdp(D("0.5")),  # another kind, which the ledger cannot convert
    ],
)
def test_a_cost_that_differs_from_the_reservation_is_refused_and_writes_nothing(
    ledger: BudgetLedger, expected: PrivacyLoss
) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("10", "0.001"), None, actor="admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), actor="gateway")
    before = snapshot(ledger)
    refused_as_mismatch(ledger, expected)
    refused_as_mismatch(ledger, expected, request_id="m-1")  # and no first answer is kept
    assert snapshot(ledger) == before
    # Nothing touched the data: the worker's refund goes through.
    assert ledger.release("q1", reason="COST_MISMATCH").state is ReservationState.RELEASED
    assert ledger.get_balance(ALICE, PENGUINS).remaining == approx("10", "0.001")


def test_the_reserved_cost_is_accepted_in_any_exact_spelling(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("10", "0.001"), None, actor="admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1.5", "0.00001"), actor="gateway")
    accessed = ledger.mark_accessed("q1", expected_cost=approx("1.50", "1E-5"))
    assert accessed.state is ReservationState.ACCESSED
    # Once accessed, a redelivery with the same cost is idempotent, and another cost is still
    # refused: nothing runs that costs other than its charge.
    assert ledger.mark_accessed("q1", expected_cost=approx("1.5", "0.00001")) == accessed
    refused_as_mismatch(ledger, approx("2", "0.00001"))
    assert ledger.get_reservation("q1").state is ReservationState.ACCESSED


def test_a_pure_dp_cost_is_compared_in_a_zcdp_ledger_unit(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, PrivacyLoss.rho_zcdp(D("5")), None, actor="admin")
    ledger.reserve("q1", ALICE, PENGUINS, PrivacyLoss.pure_dp(D("1")), actor="gateway")
    assert ledger.get_reservation("q1").cost == PrivacyLoss.rho_zcdp(D("0.5"))
    refused_as_mismatch(ledger, PrivacyLoss.pure_dp(D("1.1")))
    accessed = ledger.mark_accessed("q1", expected_cost=PrivacyLoss.pure_dp(D("1")))
    assert accessed.state is ReservationState.ACCESSED


def test_without_an_expected_cost_nothing_is_checked(ledger: BudgetLedger) -> None:
    """Workers that do not send the field (older ones) mark the reservation as before."""
    ledger.open_ledger(ALICE, PENGUINS, approx("10", "0.001"), None, actor="admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), actor="gateway")
    assert ledger.mark_accessed("q1").state is ReservationState.ACCESSED
