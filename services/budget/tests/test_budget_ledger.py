"""The budget ledger's behaviour, on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import EntryKind, LedgerBalance, ReservationState
from lomas_common.errors import (
    AlreadyExists,
    BudgetExhausted,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    LomasError,
    NotFound,
)
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss

ALICE, PENGUINS, IRIS = "alice", "penguins", "iris"


def approx(epsilon: str, delta: str) -> PrivacyLoss:
    return PrivacyLoss.approx_dp(D(epsilon), D(delta))


def pure(epsilon: str) -> PrivacyLoss:
    return PrivacyLoss.pure_dp(D(epsilon))


def zcdp(rho: str) -> PrivacyLoss:
    return PrivacyLoss.rho_zcdp(D(rho))


def open_default(ledger: BudgetLedger, allocation: PrivacyLoss | None = None) -> LedgerBalance:
    return ledger.open_ledger(
        ALICE, PENGUINS, allocation or approx("10", "0.001"), None, actor="admin"
    )


def assert_balance(
    balance: LedgerBalance,
    *,
    spent: PrivacyLoss,
    reserved: PrivacyLoss,
    remaining: PrivacyLoss,
) -> None:
    assert (balance.spent, balance.reserved, balance.remaining) == (
        spent,
        reserved,
        remaining,
    )


def assert_error(
    error: pytest.ExceptionInfo[LomasError], kind: type[LomasError], reason: str
) -> None:
    assert type(error.value) is kind
    assert error.value.reason == reason


# --- ledgers -----------------------------------------------------------------------------------


def test_open_ledger_rounds_the_allocation_down(ledger: BudgetLedger) -> None:
    balance = ledger.open_ledger(
        ALICE,
        PENGUINS,
        approx("1.0000000000000000019", "0.0000100000000000009"),
        None,
        actor="admin",
        request_id="r1",
    )
    assert balance.user == ALICE
    assert balance.dataset == PENGUINS
    assert balance.definition is PrivacyDefinition.APPROX_DP
    assert balance.allocation == approx("1.000000000000000001", "0.00001")
    assert_balance(
        balance,
        spent=approx("0", "0"),
        reserved=approx("0", "0"),
        remaining=approx("1.000000000000000001", "0.00001"),
    )
    assert ledger.get_balance(ALICE, PENGUINS) == balance


def test_open_ledger_records_imported_spend_rounded_up(ledger: BudgetLedger) -> None:
    balance = ledger.open_ledger(
        ALICE,
        PENGUINS,
        approx("10", "0.001"),
        approx("2.5000000000000000001", "0.0001"),
        actor="import",
    )
    assert_balance(
        balance,
        spent=approx("2.500000000000000001", "0.0001"),
        reserved=approx("0", "0"),
        remaining=approx("7.499999999999999999", "0.0009"),
    )
    assert ledger.verify_ledger(balance.ledger_id) == []


def test_open_ledger_is_idempotent(ledger: BudgetLedger) -> None:
    first = ledger.open_ledger(ALICE, PENGUINS, approx("10", "0.001"), approx("1", "0"), "admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), actor="gateway")
    again = ledger.open_ledger(ALICE, PENGUINS, approx("10", "0.001"), approx("1", "0"), "admin")
    assert again.ledger_id == first.ledger_id
    assert again.reserved == approx("1", "0")
    assert [b.ledger_id for b in ledger.list_balances(ALICE)[0]] == [first.ledger_id]


@pytest.mark.parametrize(
    ("allocation", "already_spent"),
    [
        (approx("11", "0.001"), approx("1", "0")),
        (approx("10", "0.002"), approx("1", "0")),
        (pure("10"), None),
        (approx("10", "0.001"), None),
        (approx("10", "0.001"), approx("2", "0")),
    ],
)
def test_open_ledger_with_other_terms_raises_already_exists(
    ledger: BudgetLedger, allocation: PrivacyLoss, already_spent: PrivacyLoss | None
) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("10", "0.001"), approx("1", "0"), "admin")
    with pytest.raises(AlreadyExists) as error:
        ledger.open_ledger(ALICE, PENGUINS, allocation, already_spent, "admin")
    assert_error(error, AlreadyExists, "LEDGER_ALREADY_EXISTS")
    assert ledger.get_balance(ALICE, PENGUINS).allocation == approx("10", "0.001")


def test_open_ledger_refuses_imported_spend_above_allocation(
    ledger: BudgetLedger,
) -> None:
    with pytest.raises(InvalidArgument) as error:
        ledger.open_ledger(ALICE, PENGUINS, approx("1", "0.001"), approx("0.5", "0.01"), "admin")
    assert_error(error, InvalidArgument, "IMPORTED_SPEND_EXCEEDS_ALLOCATION")
    with pytest.raises(NotFound):
        ledger.get_balance(ALICE, PENGUINS)


def test_get_balance_of_unknown_ledger_raises_not_found(ledger: BudgetLedger) -> None:
    open_default(ledger)
    with pytest.raises(NotFound) as error:
        ledger.get_balance(ALICE, IRIS)
    assert_error(error, NotFound, "LEDGER_NOT_FOUND")
    with pytest.raises(NotFound) as error:
        ledger.get_balance("bob", PENGUINS)
    assert_error(error, NotFound, "LEDGER_NOT_FOUND")


def test_list_balances_returns_one_users_ledgers_by_dataset(
    ledger: BudgetLedger,
) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("1", "0"), None, "admin")
    ledger.open_ledger(ALICE, IRIS, zcdp("0.5"), None, "admin")
    ledger.open_ledger("bob", PENGUINS, pure("3"), None, "admin")
    balances, more = ledger.list_balances(ALICE)
    assert [(b.dataset, b.allocation) for b in balances] == [
        (IRIS, zcdp("0.5")),
        (PENGUINS, approx("1", "0")),
    ]
    assert not more
    assert ledger.list_balances("carol") == ([], False)
    first, more = ledger.list_balances(ALICE, limit=1)
    assert [b.dataset for b in first] == [IRIS] and more
    rest, more = ledger.list_balances(ALICE, after_dataset=IRIS, limit=1)
    assert [b.dataset for b in rest] == [PENGUINS] and not more


def test_empty_names_are_refused(ledger: BudgetLedger) -> None:
    with pytest.raises(InvalidArgument) as error:
        ledger.open_ledger("", PENGUINS, approx("1", "0"), None, "admin")
    assert_error(error, InvalidArgument, "FIELD_REQUIRED")
    open_default(ledger)
    with pytest.raises(InvalidArgument) as error:
        ledger.reserve("", ALICE, PENGUINS, approx("1", "0"), "gateway")
    assert_error(error, InvalidArgument, "FIELD_REQUIRED")


# --- reserve -----------------------------------------------------------------------------------


def test_reserve_rounds_the_cost_up_and_holds_it(ledger: BudgetLedger) -> None:
    open_default(ledger)
    reservation = ledger.reserve(
        "q1",
        ALICE,
        PENGUINS,
        approx("0.1000000000000000001", "0.00001"),
        actor="gateway",
    )
    assert reservation.query_id == "q1"
    assert (reservation.user, reservation.dataset) == (ALICE, PENGUINS)
    assert reservation.cost == approx("0.100000000000000001", "0.00001")
    assert reservation.state is ReservationState.RESERVED
    assert_balance(
        ledger.get_balance(ALICE, PENGUINS),
        spent=approx("0", "0"),
        reserved=approx("0.100000000000000001", "0.00001"),
        remaining=approx("9.899999999999999999", "0.00099"),
    )
    assert ledger.get_reservation("q1") == reservation


def test_arithmetic_is_exact_beyond_28_digits(ledger: BudgetLedger) -> None:
    # The balances below need 29 significant digits: Python's default decimal context (28 digits)
    # would round the remaining epsilon to ...5657, more than is really left.
    open_default(ledger, approx("12345678901.12345678901234567", "0.000000000000000003"))
    ledger.reserve("q1", ALICE, PENGUINS, approx("0.000000000000000001", "0"), "gateway")
    ledger.reserve("q2", ALICE, PENGUINS, approx("1", "0.000000000000000001"), "gateway")
    ledger.commit("q2")
    assert_balance(
        ledger.get_balance(ALICE, PENGUINS),
        spent=approx("1", "0.000000000000000001"),
        reserved=approx("0.000000000000000001", "0"),
        remaining=approx("12345678900.123456789012345669", "0.000000000000000002"),
    )
    assert ledger.verify_all() == []


def test_reserve_is_idempotent_on_the_query_id(ledger: BudgetLedger) -> None:
    open_default(ledger)
    first = ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0.0001"), actor="gateway")
    again = ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0.0001"), actor="gateway")
    assert again == first
    assert ledger.get_balance(ALICE, PENGUINS).reserved == approx("1", "0.0001")
    ledger.commit("q1")
    # a replay after the commit returns the first reservation, now committed, and charges nothing
    replay = ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0.0001"), actor="gateway")
    assert replay.state is ReservationState.COMMITTED
    assert_balance(
        ledger.get_balance(ALICE, PENGUINS),
        spent=approx("1", "0.0001"),
        reserved=approx("0", "0"),
        remaining=approx("9", "0.0009"),
    )


def test_reserve_with_a_used_query_id_and_other_terms_raises_conflict(
    ledger: BudgetLedger,
) -> None:
    open_default(ledger)
    ledger.open_ledger(ALICE, IRIS, approx("10", "0.001"), None, "admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), actor="gateway")
    for dataset, cost in [(PENGUINS, approx("2", "0")), (IRIS, approx("1", "0"))]:
        with pytest.raises(Conflict) as error:
            ledger.reserve("q1", ALICE, dataset, cost, actor="gateway")
        assert_error(error, Conflict, "QUERY_ID_CONFLICT")
    assert ledger.get_balance(ALICE, PENGUINS).reserved == approx("1", "0")
    assert ledger.get_balance(ALICE, IRIS).reserved == approx("0", "0")


def test_exhaustion_in_any_component_changes_nothing(ledger: BudgetLedger) -> None:
    balance = open_default(ledger, approx("1", "0.00001"))
    ledger.reserve("q1", ALICE, PENGUINS, approx("0.5", "0.000004"), actor="gateway")
    before = ledger.get_balance(ALICE, PENGUINS)
    for query_id, cost, requested in [
        ("q2", approx("0.1", "0.00001"), ("0.1", "0.00001")),  # delta short
        ("q3", approx("0.6", "0"), ("0.6", "0")),  # epsilon short
    ]:
        with pytest.raises(BudgetExhausted) as error:
            ledger.reserve(query_id, ALICE, PENGUINS, cost, actor="gateway")
        assert_error(error, BudgetExhausted, "PRIVACY_BUDGET_EXHAUSTED")
        assert error.value.metadata == {
            "requestedEpsilon": requested[0],
            "requestedDelta": requested[1],
            "remainingEpsilon": "0.5",
            "remainingDelta": "0.000006",
        }
        with pytest.raises(NotFound):
            ledger.get_reservation(query_id)
    assert ledger.get_balance(ALICE, PENGUINS) == before
    # exactly the remainder still fits
    ledger.reserve("q4", ALICE, PENGUINS, approx("0.5", "0.000006"), actor="gateway")
    assert ledger.get_balance(ALICE, PENGUINS).remaining == approx("0", "0")
    assert ledger.verify_ledger(balance.ledger_id) == []


def test_reserve_on_unknown_ledger_raises_not_found(ledger: BudgetLedger) -> None:
    with pytest.raises(NotFound) as error:
        ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), actor="gateway")
    assert_error(error, NotFound, "LEDGER_NOT_FOUND")


# --- mark_accessed, commit, release --------------------------------------------------------------


def test_mark_accessed_is_idempotent(ledger: BudgetLedger) -> None:
    open_default(ledger)
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), actor="gateway")
    first = ledger.mark_accessed("q1")
    assert first.state is ReservationState.ACCESSED
    assert ledger.mark_accessed("q1") == first
    assert ledger.get_balance(ALICE, PENGUINS).reserved == approx("1", "0")


def test_mark_accessed_after_release_or_unknown(ledger: BudgetLedger) -> None:
    open_default(ledger)
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), actor="gateway")
    ledger.release("q1")
    with pytest.raises(FailedPrecondition) as error:
        ledger.mark_accessed("q1")
    assert_error(error, FailedPrecondition, "RESERVATION_RELEASED")
    with pytest.raises(NotFound) as not_found:
        ledger.mark_accessed("nope")
    assert_error(not_found, NotFound, "RESERVATION_NOT_FOUND")


@pytest.mark.parametrize("access_first", [False, True])
def test_commit_charges_once(ledger: BudgetLedger, access_first: bool) -> None:
    open_default(ledger)
    ledger.reserve("q1", ALICE, PENGUINS, approx("1.25", "0.0001"), actor="gateway")
    ledger.reserve("q2", ALICE, PENGUINS, approx("2", "0"), actor="gateway")
    if access_first:
        ledger.mark_accessed("q1")
    committed = ledger.commit("q1")
    assert committed.state is ReservationState.COMMITTED
    assert ledger.commit("q1") == committed
    assert ledger.mark_accessed("q1") == committed
    assert_balance(
        ledger.get_balance(ALICE, PENGUINS),
        spent=approx("1.25", "0.0001"),
        reserved=approx("2", "0"),
        remaining=approx("6.75", "0.0009"),
    )


@pytest.mark.parametrize("accessed_before", [False, True])
def test_mark_accessed_with_charge_commits_in_one_step(
    ledger: BudgetLedger, accessed_before: bool
) -> None:
    open_default(ledger)
    ledger.reserve("q1", ALICE, PENGUINS, approx("1.25", "0.0001"), actor="gateway")
    if accessed_before:  # marked by a worker that did not charge, then redelivered
        ledger.mark_accessed("q1")
    charged = ledger.mark_accessed("q1", charge=True, expected_cost=approx("1.25", "0.0001"))
    assert charged.state is ReservationState.COMMITTED
    # Idempotent, whatever comes next: the same call, a plain mark, a commit.
    assert ledger.mark_accessed("q1", charge=True) == charged
    assert ledger.mark_accessed("q1") == charged
    assert ledger.commit("q1") == charged
    assert_balance(
        ledger.get_balance(ALICE, PENGUINS),
        spent=approx("1.25", "0.0001"),
        reserved=approx("0", "0"),
        remaining=approx("8.75", "0.0009"),
    )
    balance, entries, _ = ledger.list_entries(ALICE, PENGUINS)
    # The journal says what happened, in order: the data access, then the charge.
    assert [e.kind for e in entries if e.query_id == "q1"] == [
        EntryKind.RESERVATION,
        EntryKind.ACCESS,
        EntryKind.COMMIT,
    ]
    assert ledger.verify_ledger(balance.ledger_id) == []
    with pytest.raises(FailedPrecondition) as error:
        ledger.release("q1")
    assert_error(error, FailedPrecondition, "DATA_ACCESSED")


def test_mark_accessed_with_charge_refuses_another_cost_and_writes_nothing(
    ledger: BudgetLedger,
) -> None:
    open_default(ledger)
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), actor="gateway")
    before = ledger.get_balance(ALICE, PENGUINS)
    with pytest.raises(FailedPrecondition) as error:
        ledger.mark_accessed("q1", charge=True, expected_cost=approx("2", "0"))
    assert_error(error, FailedPrecondition, "COST_MISMATCH")
    assert ledger.get_balance(ALICE, PENGUINS) == before
    assert ledger.get_reservation("q1").state is ReservationState.RESERVED


def test_commit_after_release_or_unknown(ledger: BudgetLedger) -> None:
    open_default(ledger)
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), actor="gateway")
    ledger.release("q1")
    with pytest.raises(FailedPrecondition) as error:
        ledger.commit("q1")
    assert_error(error, FailedPrecondition, "RESERVATION_RELEASED")
    with pytest.raises(NotFound) as not_found:
        ledger.commit("nope")
    assert_error(not_found, NotFound, "RESERVATION_NOT_FOUND")
    assert ledger.get_balance(ALICE, PENGUINS).spent == approx("0", "0")


def test_release_returns_the_budget_once(ledger: BudgetLedger) -> None:
    open_default(ledger)
    ledger.reserve("q1", ALICE, PENGUINS, approx("3", "0.0005"), actor="gateway")
    released = ledger.release("q1", reason="validation failed")
    assert released.state is ReservationState.RELEASED
    assert ledger.release("q1") == released
    assert_balance(
        ledger.get_balance(ALICE, PENGUINS),
        spent=approx("0", "0"),
        reserved=approx("0", "0"),
        remaining=approx("10", "0.001"),
    )


@pytest.mark.parametrize("then", ["mark_accessed", "commit"])
def test_no_release_after_data_access(ledger: BudgetLedger, then: str) -> None:
    open_default(ledger)
    ledger.reserve("q1", ALICE, PENGUINS, approx("3", "0.0005"), actor="gateway")
    getattr(ledger, then)("q1")
    before = ledger.get_balance(ALICE, PENGUINS)
    with pytest.raises(FailedPrecondition) as error:
        ledger.release("q1")
    assert_error(error, FailedPrecondition, "DATA_ACCESSED")
    assert ledger.get_balance(ALICE, PENGUINS) == before
    assert ledger.get_reservation("q1").state is not ReservationState.RELEASED
    # the charge can still be (or stays) committed
    assert ledger.commit("q1").state is ReservationState.COMMITTED
    assert ledger.get_balance(ALICE, PENGUINS).spent == approx("3", "0.0005")


def test_release_of_unknown_reservation_raises_not_found(ledger: BudgetLedger) -> None:
    with pytest.raises(NotFound) as error:
        ledger.release("nope")
    assert_error(error, NotFound, "RESERVATION_NOT_FOUND")


# --- privacy definitions -------------------------------------------------------------------------


def test_pure_dp_cost_on_approx_dp_ledger_charges_zero_delta(
    ledger: BudgetLedger,
) -> None:
    open_default(ledger)
    reservation = ledger.reserve("q1", ALICE, PENGUINS, pure("0.5"), actor="gateway")
    assert reservation.cost == approx("0.5", "0")


def test_pure_dp_ledger_takes_delta_free_costs_only(ledger: BudgetLedger) -> None:
    open_default(ledger, pure("2"))
    assert ledger.reserve("q1", ALICE, PENGUINS, pure("0.5"), "gateway").cost == pure("0.5")
    assert ledger.reserve("q2", ALICE, PENGUINS, approx("0.5", "0"), "gateway").cost == pure("0.5")
    for query_id, cost in [("q3", approx("0.5", "0.000001")), ("q4", zcdp("0.1"))]:
        with pytest.raises(InvalidArgument) as error:
            ledger.reserve(query_id, ALICE, PENGUINS, cost, "gateway")
        assert_error(error, InvalidArgument, "PRIVACY_DEFINITION_MISMATCH")
    assert ledger.get_balance(ALICE, PENGUINS).remaining == pure("1")


def test_approx_dp_ledger_refuses_zcdp_costs(ledger: BudgetLedger) -> None:
    open_default(ledger)
    with pytest.raises(InvalidArgument) as error:
        ledger.reserve("q1", ALICE, PENGUINS, zcdp("0.1"), "gateway")
    assert_error(error, InvalidArgument, "PRIVACY_DEFINITION_MISMATCH")


def test_zcdp_ledger_converts_pure_dp_costs(ledger: BudgetLedger) -> None:
    open_default(ledger, zcdp("1"))
    assert ledger.reserve("q1", ALICE, PENGUINS, zcdp("0.25"), "gateway").cost == zcdp("0.25")
    # rho = eps^2 / 2
    assert ledger.reserve("q2", ALICE, PENGUINS, pure("0.3"), "gateway").cost == zcdp("0.045")
    assert ledger.reserve("q3", ALICE, PENGUINS, approx("0.1", "0"), "gateway").cost == zcdp(
        "0.005"
    )
    # eps rounds up to 0.100000000000000001, then eps^2 / 2 = 0.0050000000000000001000...0005
    # rounds up again to the 18th decimal
    rounded = ledger.reserve("q4", ALICE, PENGUINS, pure("0.1000000000000000001"), "gateway")
    assert rounded.cost == zcdp("0.005000000000000001")
    with pytest.raises(InvalidArgument) as error:
        ledger.reserve("q5", ALICE, PENGUINS, approx("0.1", "0.000001"), "gateway")
    assert_error(error, InvalidArgument, "PRIVACY_DEFINITION_MISMATCH")
    ledger.commit("q2")
    assert_balance(
        ledger.get_balance(ALICE, PENGUINS),
        spent=zcdp("0.045"),
        reserved=zcdp("0.260000000000000001"),
        remaining=zcdp("0.694999999999999999"),
    )


def test_zcdp_ledger_exhaustion_uses_the_converted_cost(ledger: BudgetLedger) -> None:
    open_default(ledger, zcdp("0.5"))
    ledger.reserve("q1", ALICE, PENGUINS, pure("0.9"), "gateway")  # rho 0.405
    with pytest.raises(BudgetExhausted) as error:
        ledger.reserve("q2", ALICE, PENGUINS, pure("0.5"), "gateway")  # rho 0.125 > 0.095
    assert error.value.metadata == {"requestedRho": "0.125", "remainingRho": "0.095"}


def test_full_lifecycle_is_consistent(ledger: BudgetLedger) -> None:
    balance = ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), approx("1", "0"), "admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0.0001"), "gateway")
    ledger.mark_accessed("q1")
    ledger.commit("q1")
    ledger.reserve("q2", ALICE, PENGUINS, approx("1", "0.0001"), "gateway")
    ledger.release("q2")
    ledger.reserve("q3", ALICE, PENGUINS, approx("0.5", "0"), "gateway")
    assert_balance(
        ledger.get_balance(ALICE, PENGUINS),
        spent=approx("2", "0.0001"),
        reserved=approx("0.5", "0"),
        remaining=approx("2.5", "0.0009"),
    )
    assert ledger.verify_ledger(balance.ledger_id) == []
    assert ledger.verify_all() == []
