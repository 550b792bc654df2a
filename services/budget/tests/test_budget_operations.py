"""Administration of ledgers (adjust, freeze, caps, history), expiry and the sweep, request-id
replays, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from decimal import Decimal as D

import pytest
from budget_testing import FakeClock

from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import EntryKind, ReservationState
from lomas_budget.store import LedgerStore
from lomas_common.db import Database
from lomas_common.errors import (
    BudgetExhausted,
    FailedPrecondition,
    InvalidArgument,
    LomasError,
    NotFound,
    PermissionDenied,
)
from lomas_common.privacy import PrivacyLoss

ALICE, BOB, PENGUINS, IRIS = "alice", "bob", "penguins", "iris"


def approx(epsilon: str, delta: str) -> PrivacyLoss:
    return PrivacyLoss.approx_dp(D(epsilon), D(delta))


def pure(epsilon: str) -> PrivacyLoss:
    return PrivacyLoss.pure_dp(D(epsilon))


def zcdp(rho: str) -> PrivacyLoss:
    return PrivacyLoss.rho_zcdp(D(rho))


def assert_error(
    error: pytest.ExceptionInfo[LomasError], kind: type[LomasError], reason: str
) -> None:
    assert type(error.value) is kind
    assert error.value.reason == reason


# --- adjusting an allocation ---------------------------------------------------------------------


def test_adjust_raises_and_lowers_the_allocation_with_signed_entries(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0.0001"), "gateway")
    ledger.commit("q1")
    ledger.reserve("q2", ALICE, PENGUINS, approx("1", "0"), "gateway")
    raised = ledger.adjust_allocation(ALICE, PENGUINS, approx("8", "0.002"), "admin", "grant")
    assert raised.allocation == approx("8", "0.002")
    assert raised.remaining == approx("6", "0.0019")
    # exactly spent + reserved is the lowest allowed; the allocation rounds down
    lowered = ledger.adjust_allocation(
        ALICE, PENGUINS, approx("2.0000000000000000009", "0.0001"), "admin", "audit finding"
    )
    assert lowered.allocation == approx("2", "0.0001")
    assert lowered.remaining == approx("0", "0")
    _, entries, _ = ledger.list_entries(ALICE, PENGUINS)
    adjustments = [e for e in entries if e.kind is EntryKind.ADJUSTMENT]
    assert [(e.epsilon, e.delta, e.actor, e.reason) for e in adjustments] == [
        (D(3), D("0.001"), "admin", "grant"),
        (D(-6), D("-0.0019"), "admin", "audit finding"),
    ]
    # the same allocation again writes nothing
    assert ledger.adjust_allocation(ALICE, PENGUINS, approx("2", "0.0001"), "admin") == lowered
    assert ledger.verify_all() == []


@pytest.mark.parametrize(
    ("allocation", "kind", "reason"),
    [
        (approx("1.5", "0.001"), FailedPrecondition, "ALLOCATION_BELOW_SPENT"),  # eps < held
        (approx("5", "0.00009"), FailedPrecondition, "ALLOCATION_BELOW_SPENT"),  # delta < spent
        (pure("5"), InvalidArgument, "PRIVACY_DEFINITION_MISMATCH"),
    ],
)
def test_adjust_refuses_below_spent_or_another_definition(
    ledger: BudgetLedger, allocation: PrivacyLoss, kind: type[LomasError], reason: str
) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0.0001"), "gateway")
    ledger.commit("q1")
    ledger.reserve("q2", ALICE, PENGUINS, approx("1", "0"), "gateway")
    before = ledger.get_balance(ALICE, PENGUINS)
    with pytest.raises(kind) as error:
        ledger.adjust_allocation(ALICE, PENGUINS, allocation, "admin")
    assert_error(error, kind, reason)
    assert ledger.get_balance(ALICE, PENGUINS) == before
    with pytest.raises(NotFound):
        ledger.adjust_allocation(BOB, PENGUINS, approx("5", "0"), "admin")


# --- freezing ------------------------------------------------------------------------------------


def test_a_frozen_user_cannot_reserve_but_settles_what_is_in_flight(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "admin")
    ledger.open_ledger(ALICE, IRIS, zcdp("1"), None, "admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), "gateway")
    state = ledger.freeze_user(ALICE, "admin", "suspicious queries")
    assert state.frozen and state.reason == "suspicious queries"
    assert [b.frozen for b in state.ledgers] == [True, True]
    with pytest.raises(PermissionDenied) as error:
        ledger.reserve("q2", ALICE, IRIS, zcdp("0.1"), "gateway")
    assert_error(error, PermissionDenied, "USER_MAY_NOT_QUERY")
    # in flight: still commits; a replay of the first reservation is not a new query
    assert ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), "gateway").query_id == "q1"
    assert ledger.commit("q1").state is ReservationState.COMMITTED
    # a new grant of a frozen user starts frozen; freezing again writes nothing
    assert ledger.open_ledger(ALICE, "adult", pure("1"), None, "admin").frozen
    assert ledger.freeze_user(ALICE, "admin").reason == "suspicious queries"
    unfrozen = ledger.unfreeze_user(ALICE, "admin", "cleared")
    assert not unfrozen.frozen and [b.frozen for b in unfrozen.ledgers] == [False, False, False]
    ledger.reserve("q2", ALICE, IRIS, zcdp("0.1"), "gateway")
    kinds = [e.kind for e in ledger.list_entries(ALICE, PENGUINS)[1]]
    assert kinds.count(EntryKind.FREEZE) == 1 and kinds[-1] is EntryKind.UNFREEZE
    assert ledger.verify_all() == []


def test_freezing_a_user_without_ledgers_applies_to_later_ones(ledger: BudgetLedger) -> None:
    assert not ledger.get_user(BOB).frozen
    ledger.freeze_user(BOB, "admin", "not yet trained")
    balance = ledger.open_ledger(BOB, PENGUINS, approx("1", "0"), None, "admin")
    assert balance.frozen
    with pytest.raises(PermissionDenied):
        ledger.reserve("q1", BOB, PENGUINS, approx("0.1", "0"), "gateway")
    assert ledger.verify_all() == []


# --- dataset caps --------------------------------------------------------------------------------


def test_a_dataset_cap_bounds_all_users_together(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), approx("1", "0"), "admin")
    ledger.open_ledger(BOB, PENGUINS, pure("5"), None, "admin")
    ledger.reserve("a1", ALICE, PENGUINS, approx("1", "0.0001"), "gateway")
    cap = ledger.set_dataset_cap(PENGUINS, approx("4", "0.0005"), "admin", "collusion bound")
    assert cap.used == approx("2", "0.0001")  # alice's import and reservation
    assert cap.remaining == approx("2", "0.0004")
    assert ledger.get_balance(BOB, PENGUINS).capped
    ledger.reserve("b1", BOB, PENGUINS, pure("1.5"), "gateway")
    with pytest.raises(BudgetExhausted) as error:
        ledger.reserve("b2", BOB, PENGUINS, pure("1"), "gateway")  # bob's ledger has room
    assert_error(error, BudgetExhausted, "DATASET_CAP_EXHAUSTED")
    assert error.value.metadata["remainingEpsilon"] == "0.5"
    assert error.value.metadata["remainingDelta"] == "0.0004"
    ledger.release("a1")  # a release gives the cap back
    ledger.reserve("b2", BOB, PENGUINS, pure("1"), "gateway")
    assert ledger.get_dataset_cap(PENGUINS).used == approx("3.5", "0")
    # other datasets are not bounded
    ledger.open_ledger(ALICE, IRIS, approx("5", "0"), None, "admin")
    ledger.reserve("i1", ALICE, IRIS, approx("5", "0"), "gateway")
    assert ledger.verify_all() == []


def test_a_zcdp_cap_counts_pure_dp_charges_in_rho(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, zcdp("1"), None, "admin")
    ledger.open_ledger(BOB, PENGUINS, pure("10"), None, "admin")
    ledger.set_dataset_cap(PENGUINS, zcdp("0.5"), "admin")
    ledger.reserve("a1", ALICE, PENGUINS, zcdp("0.3"), "gateway")
    ledger.reserve("b1", BOB, PENGUINS, pure("0.6"), "gateway")  # rho 0.18
    with pytest.raises(BudgetExhausted) as error:
        ledger.reserve("b2", BOB, PENGUINS, pure("0.3"), "gateway")  # rho 0.045
    assert_error(error, BudgetExhausted, "DATASET_CAP_EXHAUSTED")
    assert error.value.metadata["requestedRho"] == "0.045"
    assert error.value.metadata["remainingRho"] == "0.02"
    ledger.reserve("b3", BOB, PENGUINS, pure("0.2"), "gateway")  # rho 0.02: exactly what is left
    assert ledger.get_dataset_cap(PENGUINS).used == zcdp("0.5")
    assert ledger.get_balance(BOB, PENGUINS).reserved == pure("0.8")
    assert ledger.verify_all() == []


def test_cap_edge_and_refusals(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, zcdp("1"), None, "admin")
    ledger.reserve("a1", ALICE, PENGUINS, zcdp("0.3"), "gateway")
    with pytest.raises(FailedPrecondition) as error:
        ledger.set_dataset_cap(PENGUINS, approx("1", "0.1"), "admin")  # cannot bound rho
    assert_error(error, FailedPrecondition, "DATASET_CAP_DEFINITION_MISMATCH")
    with pytest.raises(FailedPrecondition) as error:
        ledger.set_dataset_cap(PENGUINS, zcdp("0.2"), "admin")
    assert_error(error, FailedPrecondition, "DATASET_CAP_BELOW_USED")
    ledger.set_dataset_cap(PENGUINS, zcdp("0.3"), "admin")  # exactly what is used
    with pytest.raises(FailedPrecondition) as error:
        ledger.open_ledger(BOB, PENGUINS, approx("1", "0.1"), None, "admin")
    assert_error(error, FailedPrecondition, "DATASET_CAP_DEFINITION_MISMATCH")
    with pytest.raises(BudgetExhausted) as exhausted:
        ledger.open_ledger(BOB, PENGUINS, pure("1"), pure("0.1"), "admin")  # import rho 0.005
    assert_error(exhausted, BudgetExhausted, "DATASET_CAP_EXHAUSTED")
    removed = ledger.set_dataset_cap(PENGUINS, None, "admin", "lifted")
    assert removed.cap is None and not ledger.get_balance(ALICE, PENGUINS).capped
    ledger.reserve("a2", ALICE, PENGUINS, zcdp("0.5"), "gateway")
    assert ledger.set_dataset_cap(PENGUINS, zcdp("2"), "admin").used == zcdp("0.8")
    assert ledger.verify_all() == []


# --- history -------------------------------------------------------------------------------------


def test_history_pages_through_every_entry_with_actor_reason_and_query(
    ledger: BudgetLedger,
) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), approx("1", "0"), "admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), "gateway")
    ledger.mark_accessed("q1", actor="worker-7")
    ledger.commit("q1", actor="worker-7")
    ledger.reserve("q2", ALICE, PENGUINS, approx("1", "0"), "gateway")
    ledger.release("q2", actor="gateway", reason="queue unavailable")
    balance, first, more = ledger.list_entries(ALICE, PENGUINS, limit=4)
    assert more and [e.seq for e in first] == [1, 2, 3, 4]
    _, rest, more = ledger.list_entries(ALICE, PENGUINS, after_seq=4, limit=4)
    assert not more
    entries = first + rest
    assert [(e.kind.value, e.query_id, e.actor, e.reason) for e in entries] == [
        ("allocation", None, "admin", ""),
        ("imported_spend", None, "admin", ""),
        ("reservation", "q1", "gateway", ""),
        ("access", "q1", "worker-7", ""),
        ("commit", "q1", "worker-7", ""),
        ("reservation", "q2", "gateway", ""),
        ("release", "q2", "gateway", "queue unavailable"),
    ]
    assert entries[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert balance.entry_count == 7 and balance.head_hash == entries[-1].hash


# --- expiry and the sweep ------------------------------------------------------------------------


def test_reservations_have_an_owner_and_an_expiry(ledger: BudgetLedger, clock: FakeClock) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "admin")
    first = ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), "alice", owner="gateway-2")
    second = ledger.reserve("q2", ALICE, PENGUINS, approx("1", "0"), "alice", ttl_seconds=60)
    assert (first.owner, second.owner) == ("gateway-2", "alice")
    assert first.expires_at > second.expires_at > second.created_at
    for ttl in (0, -5, 7 * 24 * 3600 + 1):
        with pytest.raises(InvalidArgument) as error:
            ledger.reserve("q3", ALICE, PENGUINS, approx("1", "0"), "alice", ttl_seconds=ttl)
        assert_error(error, InvalidArgument, "TTL_INVALID")


def test_the_sweep_releases_unstarted_and_commits_accessed_reservations(
    ledger: BudgetLedger, clock: FakeClock
) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "admin")
    ledger.reserve("never-ran", ALICE, PENGUINS, approx("1", "0"), "gateway", ttl_seconds=60)
    ledger.reserve("touched", ALICE, PENGUINS, approx("1.5", "0"), "gateway", ttl_seconds=60)
    ledger.mark_accessed("touched")
    ledger.reserve("done", ALICE, PENGUINS, approx("0.5", "0"), "gateway", ttl_seconds=60)
    ledger.commit("done")
    ledger.reserve("young", ALICE, PENGUINS, approx("1", "0"), "gateway", ttl_seconds=600)
    clock.advance(59)
    assert ledger.sweep().released == ()
    clock.advance(2)
    report = ledger.sweep()
    assert (report.released, report.committed) == (("never-ran",), ("touched",))
    assert ledger.sweep().released == ()  # nothing left to do
    states = {q: ledger.get_reservation(q).state.value for q in ("never-ran", "touched", "young")}
    assert states == {"never-ran": "released", "touched": "committed", "young": "reserved"}
    balance = ledger.get_balance(ALICE, PENGUINS)
    assert (balance.spent, balance.reserved) == (approx("2", "0"), approx("1", "0"))
    entries = ledger.list_entries(ALICE, PENGUINS)[1]
    swept = [(e.kind.value, e.query_id, e.actor) for e in entries if e.actor == "sweeper"]
    assert swept == [("release", "never-ran", "sweeper"), ("commit", "touched", "sweeper")]
    # a late worker finds the released reservation and does not run
    with pytest.raises(FailedPrecondition) as error:
        ledger.mark_accessed("never-ran")
    assert_error(error, FailedPrecondition, "RESERVATION_RELEASED")
    assert ledger.commit("touched").state is ReservationState.COMMITTED  # idempotent, no charge
    assert ledger.get_balance(ALICE, PENGUINS).spent == approx("2", "0")
    assert ledger.verify_all() == []


def test_the_sweep_gives_a_dataset_cap_back(ledger: BudgetLedger, clock: FakeClock) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "admin")
    ledger.set_dataset_cap(PENGUINS, approx("1", "0"), "admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), "gateway", ttl_seconds=10)
    clock.advance(11)
    assert ledger.sweep().released == ("q1",)
    assert ledger.get_dataset_cap(PENGUINS).used == approx("0", "0")
    assert ledger.verify_all() == []


# --- request ids ---------------------------------------------------------------------------------


def test_a_replay_returns_the_first_answer(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "admin", request_id="o1")
    first = ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), "gw", request_id="r1")
    committed = ledger.commit("q1", request_id="c1")
    # the reserve replay returns the first answer (RESERVED), not the state now
    assert ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), "gw", request_id="r1") == first
    assert ledger.commit("q1", request_id="c1") == committed
    adjusted = ledger.adjust_allocation(ALICE, PENGUINS, approx("6", "0.001"), "a", request_id="a1")
    ledger.adjust_allocation(ALICE, PENGUINS, approx("7", "0.001"), "a", request_id="a2")
    assert (
        ledger.adjust_allocation(ALICE, PENGUINS, approx("6", "0.001"), "a", request_id="a1")
        == adjusted
    )
    assert ledger.get_balance(ALICE, PENGUINS).allocation == approx("7", "0.001")
    frozen = ledger.freeze_user(ALICE, "admin", request_id="f1")
    ledger.unfreeze_user(ALICE, "admin")
    assert ledger.freeze_user(ALICE, "admin", request_id="f1") == frozen
    assert not ledger.get_user(ALICE).frozen  # the replay changed nothing
    opened = ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "x", request_id="o1")
    assert opened.allocation == approx("5", "0.001") and opened.entry_count == 1
    assert ledger.verify_all() == []


def test_a_request_id_reused_for_another_request_is_refused(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "admin")
    ledger.reserve("q1", ALICE, PENGUINS, approx("1", "0"), "gw", request_id="r1")
    ledger.reserve("q2", ALICE, PENGUINS, approx("1", "0"), "gw")
    calls: tuple[Callable[[], object], ...] = (
        lambda: ledger.reserve("q1", ALICE, PENGUINS, approx("2", "0"), "gw", request_id="r1"),
        lambda: ledger.commit("q2", request_id="r1"),
        lambda: ledger.release("q1", request_id="r1"),
    )
    for call in calls:
        with pytest.raises(InvalidArgument) as error:
            call()
        assert_error(error, InvalidArgument, "REQUEST_ID_REUSED")
    assert ledger.get_reservation("q1").state is ReservationState.RESERVED
    assert ledger.get_reservation("q2").state is ReservationState.RESERVED


def test_a_failed_request_is_not_remembered(ledger: BudgetLedger) -> None:
    ledger.open_ledger(ALICE, PENGUINS, approx("1", "0.001"), None, "admin")
    with pytest.raises(BudgetExhausted):
        ledger.reserve("q1", ALICE, PENGUINS, approx("2", "0"), "gw", request_id="r1")
    ledger.adjust_allocation(ALICE, PENGUINS, approx("3", "0.001"), "admin")
    # the retry with the same request id runs for real now that it fits
    assert ledger.reserve("q1", ALICE, PENGUINS, approx("2", "0"), "gw", request_id="r1").cost
    assert ledger.get_balance(ALICE, PENGUINS).reserved == approx("2", "0")


def test_request_ids_are_forgotten_after_the_retention_period(
    database: Database, clock: FakeClock
) -> None:
    ledger = BudgetLedger(
        LedgerStore(database),
        clock=clock,
        reservation_ttl_seconds=60,
        request_retention_seconds=3600,
    )
    LedgerStore(database).create_schema()
    ledger.open_ledger(ALICE, PENGUINS, approx("5", "0.001"), None, "admin")
    first = ledger.adjust_allocation(ALICE, PENGUINS, approx("6", "0.001"), "a", request_id="a1")
    ledger.adjust_allocation(ALICE, PENGUINS, approx("7", "0.001"), "a")
    clock.advance(3599)
    ledger.sweep()
    assert ledger.adjust_allocation(
        ALICE, PENGUINS, approx("6", "0.001"), "a", request_id="a1"
    ) == (first)
    clock.advance(2)
    ledger.sweep()
    # forgotten: the same request id now runs as a new request
    again = ledger.adjust_allocation(ALICE, PENGUINS, approx("6", "0.001"), "a", request_id="a1")
    assert again.allocation == approx("6", "0.001") and again.entry_count == 4
    with pytest.raises(ValueError):
        BudgetLedger(
            LedgerStore(database), reservation_ttl_seconds=60, request_retention_seconds=60
        )
