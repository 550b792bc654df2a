"""The BudgetService over gRPC, as mesh peers call it: a real `lomas_budget.main` process on each
store. Codes and ErrorInfo reasons cross the wire; replays with a request id return the first
response; the service sweeps expired reservations on its own, also across a SIGKILL."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import grpc
import pytest
from budget_testing import BudgetProcess, Peer, approx, open_ledger, pure, refused, reserve, zcdp

from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas.common.v1 import privacy_pb2
from lomas_common.errors import Code


def test_peers_need_the_service_token(service: BudgetProcess) -> None:
    with grpc.insecure_channel(service.target) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.VerifyLedgers(budget_pb2.VerifyLedgersRequest())
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_reservations_carry_owner_expiry_and_typed_refusals(budget: Peer, user: str) -> None:
    reservation = reserve(
        budget, f"{user}-q1", user, approx("1", "0"), owner="gw-1", ttl_seconds=600
    )
    assert (
        reservation.owner == "gw-1" and reservation.state == budget_pb2.RESERVATION_STATE_RESERVED
    )
    lifetime = reservation.expire_time.ToDatetime() - reservation.create_time.ToDatetime()
    assert lifetime.total_seconds() == pytest.approx(600, abs=1)
    metadata = refused(
        lambda: reserve(budget, f"{user}-q2", user, approx("10", "0")),
        Code.RESOURCE_EXHAUSTED,
        "PRIVACY_BUDGET_EXHAUSTED",
    )
    assert metadata == {
        "requestedEpsilon": "10",
        "requestedDelta": "0",
        "remainingEpsilon": "9",
        "remainingDelta": "0.001",
    }
    refused(
        lambda: reserve(budget, f"{user}-q3", user, zcdp("0.1")),
        Code.INVALID_ARGUMENT,
        "PRIVACY_DEFINITION_MISMATCH",
    )
    refused(
        lambda: reserve(budget, f"{user}-q4", "nobody", approx("1", "0")),
        Code.NOT_FOUND,
        "LEDGER_NOT_FOUND",
    )
    refused(
        lambda: reserve(budget, f"{user}-q5", user, approx("1", "0"), ttl_seconds=-1),
        Code.INVALID_ARGUMENT,
        "TTL_INVALID",
    )
    release = budget_pb2.ReleaseReservationRequest(query_id=f"{user}-q1", reason="queue down")
    assert budget.call("ReleaseReservation", release).reservation.state == (
        budget_pb2.RESERVATION_STATE_RELEASED
    )
    refused(
        lambda: budget.call(
            "CommitReservation", budget_pb2.CommitReservationRequest(query_id=f"{user}-q1")
        ),
        Code.FAILED_PRECONDITION,
        "RESERVATION_RELEASED",
    )


def test_a_reservation_is_read_back_by_its_query_id(budget: Peer, user: str) -> None:
    held = reserve(budget, f"{user}-read", user, approx("1", "0"), owner="gw-1")
    lookup = budget_pb2.GetReservationRequest(query_id=f"{user}-read")
    assert budget.call("GetReservation", lookup).reservation == held
    refused(
        lambda: budget.call(
            "GetReservation", budget_pb2.GetReservationRequest(query_id=f"{user}-none")
        ),
        Code.NOT_FOUND,
        "RESERVATION_NOT_FOUND",
    )


def test_replays_with_a_request_id_return_the_first_response(budget: Peer, user: str) -> None:
    first = reserve(budget, f"{user}-q1", user, approx("1", "0"), request_id=f"{user}-r1")
    mark = budget_pb2.MarkReservationAccessedRequest(
        query_id=f"{user}-q1", request_id=f"{user}-m1", actor="worker-3"
    )
    accessed = budget.call("MarkReservationAccessed", mark).reservation
    commit = budget_pb2.CommitReservationRequest(query_id=f"{user}-q1", request_id=f"{user}-c1")
    committed = budget.call("CommitReservation", commit).reservation
    assert reserve(budget, f"{user}-q1", user, approx("1", "0"), request_id=f"{user}-r1") == first
    assert budget.call("MarkReservationAccessed", mark).reservation == accessed
    assert budget.call("CommitReservation", commit).reservation == committed
    assert first.state == budget_pb2.RESERVATION_STATE_RESERVED  # the first answer, kept
    refused(
        lambda: reserve(budget, f"{user}-q2", user, approx("1", "0"), request_id=f"{user}-r1"),
        Code.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    adjust = budget_pb2.AdjustAllocationRequest(
        user=user,
        dataset="penguins",
        allocation=approx("12", "0.001"),
        actor="admin",
        request_id=f"{user}-a1",
    )
    adjusted = budget.call("AdjustAllocation", adjust).ledger
    budget.call(
        "AdjustAllocation",
        budget_pb2.AdjustAllocationRequest(
            user=user, dataset="penguins", allocation=approx("15", "0.001"), actor="admin"
        ),
    )
    assert budget.call("AdjustAllocation", adjust).ledger == adjusted
    ledger = budget.call(
        "GetLedger", budget_pb2.GetLedgerRequest(user=user, dataset="penguins")
    ).ledger
    assert ledger.allocation == approx("15", "0.001")
    assert ledger.spent == approx("1", "0")


def test_views_at_a_chosen_delta(budget: Peer) -> None:
    name = f"user-{uuid.uuid4().hex[:8]}"
    open_ledger(budget, name, "penguins", zcdp("0.5"))
    open_ledger(budget, name, "iris", pure("2"))
    open_ledger(budget, name, "adult", approx("1", "0.001"))
    ledger = budget.call(
        "GetLedger", budget_pb2.GetLedgerRequest(user=name, dataset="penguins", delta="0.00001")
    ).ledger
    assert ledger.remaining_at_delta.epsilon == "5.298525912188081207"  # rounded down
    assert ledger.remaining_at_delta.delta == "0.00001"
    plain = budget.call("GetLedger", budget_pb2.GetLedgerRequest(user=name, dataset="penguins"))
    assert not plain.ledger.HasField("remaining_at_delta")
    listed = budget.call("ListLedgers", budget_pb2.ListLedgersRequest(user=name, delta="1e-6"))
    views = {lg.dataset: lg for lg in listed.ledgers}
    assert views["iris"].remaining_at_delta.epsilon == "2"
    assert not views["adult"].HasField("remaining_at_delta")
    assert Decimal(views["penguins"].remaining_at_delta.epsilon) > Decimal("5.298525912188081207")
    for delta in ("0", "1", "-0.1", "abc"):
        refused(
            lambda d=delta: budget.call(
                "GetLedger", budget_pb2.GetLedgerRequest(user=name, dataset="iris", delta=d)
            ),
            Code.INVALID_ARGUMENT,
            "PRIVACY_LOSS_INVALID",
        )


def test_history_freeze_and_caps(budget: Peer, user: str) -> None:
    reserve(budget, f"{user}-q1", user, approx("1", "0.0001"))
    budget.call(
        "AdjustAllocation",
        budget_pb2.AdjustAllocationRequest(
            user=user,
            dataset="penguins",
            allocation=approx("4", "0.0005"),
            actor="admin",
            reason="lowered",
        ),
    )
    frozen = budget.call(
        "FreezeUser", budget_pb2.FreezeUserRequest(user=user, actor="admin", reason="audit")
    )
    assert frozen.user.frozen and [lg.frozen for lg in frozen.ledgers] == [True]
    assert budget.call("GetUserState", budget_pb2.GetUserStateRequest(user=user)).user.frozen
    refused(
        lambda: reserve(budget, f"{user}-q2", user, approx("1", "0")),
        Code.PERMISSION_DENIED,
        "USER_MAY_NOT_QUERY",
    )
    budget.call("UnfreezeUser", budget_pb2.UnfreezeUserRequest(user=user, actor="admin"))
    reserve(budget, f"{user}-q2", user, approx("1", "0"))

    entries = []
    listing = budget_pb2.ListLedgerEntriesRequest(user=user, dataset="penguins", page_size=2)
    while True:
        page = budget.call("ListLedgerEntries", listing)
        entries += page.entries
        if not page.next_page_token:
            break
        listing.page_token = page.next_page_token
    kinds = [
        budget_pb2.LedgerEntryKind.Name(e.kind).removeprefix("LEDGER_ENTRY_KIND_") for e in entries
    ]
    assert kinds == ["ALLOCATION", "RESERVATION", "ADJUSTMENT", "FREEZE", "UNFREEZE", "RESERVATION"]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    adjustment = entries[2]
    assert adjustment.amount == approx("-6", "-0.0005") and adjustment.reason == "lowered"
    assert entries[3].actor == "admin" and entries[3].reason == "audit"
    assert entries[5].query_id == f"{user}-q2" and entries[5].prev_hash == entries[4].hash
    assert page.ledger.head_hash == entries[-1].hash and page.ledger.entry_count == 6

    dataset = f"ds-{uuid.uuid4().hex[:8]}"
    open_ledger(budget, user, dataset, approx("5", "0.001"))
    capped = budget.call(
        "SetDatasetCap",
        budget_pb2.SetDatasetCapRequest(
            dataset=dataset, cap=approx("2", "0.0001"), actor="admin", reason="collusion"
        ),
    ).cap
    assert capped.remaining == approx("2", "0.0001") and capped.reason == "collusion"
    request = budget_pb2.ReserveBudgetRequest(
        query_id=f"{user}-c1", user=user, dataset=dataset, cost=approx("3", "0"), actor="gw"
    )
    refused(
        lambda: budget.call("ReserveBudget", request),
        Code.RESOURCE_EXHAUSTED,
        "DATASET_CAP_EXHAUSTED",
    )
    refused(
        lambda: budget.call(
            "SetDatasetCap",
            budget_pb2.SetDatasetCapRequest(dataset=dataset, cap=zcdp("1"), actor="admin"),
        ),
        Code.FAILED_PRECONDITION,
        "DATASET_CAP_DEFINITION_MISMATCH",
    )
    removed = budget.call(
        "SetDatasetCap", budget_pb2.SetDatasetCapRequest(dataset=dataset, actor="admin")
    ).cap
    assert not removed.HasField("cap")
    assert budget.call("ReserveBudget", request).reservation.cost == approx("3", "0")
    got = budget.call("GetDatasetCap", budget_pb2.GetDatasetCapRequest(dataset=dataset)).cap
    assert not got.HasField("cap")
    report = budget.call("VerifyLedgers", budget_pb2.VerifyLedgersRequest())
    assert list(report.problems) == [] and report.entries_checked > 0


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_service_sweeps_expired_reservations_by_itself(budget: Peer, user: str) -> None:
    reserve(budget, f"{user}-unstarted", user, approx("1", "0"), ttl_seconds=1)
    reserve(budget, f"{user}-touched", user, approx("2", "0"), ttl_seconds=1)
    budget.call(
        "MarkReservationAccessed",
        budget_pb2.MarkReservationAccessedRequest(query_id=f"{user}-touched"),
    )

    def ledger() -> budget_pb2.Ledger:
        request = budget_pb2.GetLedgerRequest(user=user, dataset="penguins")
        response: budget_pb2.GetLedgerResponse = budget.call("GetLedger", request)
        return response.ledger

    wait_for(lambda: ledger().reserved == approx("0", "0"))
    assert ledger().spent == approx("2", "0")  # kept: a worker touched the data
    sweep = budget.call("SweepReservations", budget_pb2.SweepReservationsRequest(request_id="s"))
    assert list(sweep.released) == []


def test_a_restart_resumes_the_sweep(service: BudgetProcess, user: str) -> None:
    budget = service.peer()
    try:
        reserve(budget, f"{user}-unstarted", user, approx("1", "0"), ttl_seconds=2)
        reserve(budget, f"{user}-touched", user, approx("2", "0"), ttl_seconds=2)
        budget.call(
            "MarkReservationAccessed",
            budget_pb2.MarkReservationAccessedRequest(query_id=f"{user}-touched"),
        )
    finally:
        budget.close()
    service.kill()  # SIGKILL before the reservations expire
    time.sleep(2.1)  # they expire while no service runs
    service.start()
    budget = service.peer()
    try:
        request = budget_pb2.ListLedgerEntriesRequest(user=user, dataset="penguins")
        wait_for(lambda: len(budget.call("ListLedgerEntries", request).entries) == 6)
        entries = budget.call("ListLedgerEntries", request).entries
        swept = {(e.query_id, budget_pb2.LedgerEntryKind.Name(e.kind)) for e in entries[4:]}
        assert swept == {
            (f"{user}-unstarted", "LEDGER_ENTRY_KIND_RELEASE"),
            (f"{user}-touched", "LEDGER_ENTRY_KIND_COMMIT"),
        }
        assert {e.actor for e in entries[4:]} == {"sweeper"}
    finally:
        budget.close()


def test_the_worker_cost_recheck_crosses_the_wire(budget: Peer, user: str) -> None:
    reserve(budget, f"{user}-q1", user, approx("1", "0"))
    ledger_before = budget.call(
        "GetLedger", budget_pb2.GetLedgerRequest(user=user, dataset="penguins")
    ).ledger
    mismatch = budget_pb2.MarkReservationAccessedRequest(
        query_id=f"{user}-q1", expected_cost=approx("3", "0")
    )
    metadata = refused(
        lambda: budget.call("MarkReservationAccessed", mismatch),
        Code.FAILED_PRECONDITION,
        "COST_MISMATCH",
    )
    assert metadata == {"queryId": f"{user}-q1"}
    refused(
        lambda: budget.call(
            "MarkReservationAccessed",
            budget_pb2.MarkReservationAccessedRequest(
                query_id=f"{user}-q1",
                expected_cost=privacy_pb2.PrivacyLoss(
                    approx_dp=privacy_pb2.ApproxDp(epsilon="\u0661", delta="0")
                ),
            ),
        ),
        Code.INVALID_ARGUMENT,
        "PRIVACY_LOSS_INVALID",
    )
    assert (
        budget.call("GetLedger", budget_pb2.GetLedgerRequest(user=user, dataset="penguins")).ledger
        == ledger_before
    )
    match = budget_pb2.MarkReservationAccessedRequest(
        query_id=f"{user}-q1", expected_cost=approx("1.0", "0")
    )
    assert budget.call("MarkReservationAccessed", match).reservation.state == (
        budget_pb2.RESERVATION_STATE_ACCESSED
    )


def test_ledger_page_tokens_are_bound_to_their_list(budget: Peer) -> None:
    name = f"user-{uuid.uuid4().hex[:8]}"
    for dataset in ("penguins", "iris", "adult"):
        open_ledger(budget, name, dataset, approx("1", "0"))
    first = budget.call("ListLedgers", budget_pb2.ListLedgersRequest(user=name, page_size=2))
    assert len(first.ledgers) == 2 and first.next_page_token
    second = budget.call(
        "ListLedgers",
        budget_pb2.ListLedgersRequest(user=name, page_size=2, page_token=first.next_page_token),
    )
    assert len(second.ledgers) == 1 and not second.next_page_token
    for request in (
        budget_pb2.ListLedgersRequest(user="someone-else", page_token=first.next_page_token),
        budget_pb2.ListLedgersRequest(user=name, page_token="eyJvZmZzZXQiOiAxZTk5OX0="),
        budget_pb2.ListLedgerEntriesRequest(
            user=name, dataset="penguins", page_token=first.next_page_token
        ),
    ):
        method = type(request).__name__.removesuffix("Request")
        refused(
            lambda r=request, m=method: budget.call(m, r),
            Code.INVALID_ARGUMENT,
            "PAGE_TOKEN_INVALID",
        )
    refused(
        lambda: budget.call("ListLedgers", budget_pb2.ListLedgersRequest(user=name, page_size=-1)),
        Code.INVALID_ARGUMENT,
        "PAGE_SIZE_INVALID",
    )
