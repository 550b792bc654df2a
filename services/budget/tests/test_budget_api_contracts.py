"""The BudgetService's contracts over gRPC: keyset pages that stay stable while rows arrive, and
retries answered once (AIP-155), for every family of mutating RPCs."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

from budget_testing import BudgetProcess, Peer, approx, open_ledger, refused, reserve

from lomas.budget.v1 import budget_pb2
from lomas_common.errors import Code


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def get_ledger(budget: Peer, user: str, dataset: str = "penguins") -> budget_pb2.Ledger:
    request = budget_pb2.GetLedgerRequest(user=user, dataset=dataset)
    ledger: budget_pb2.Ledger = budget.call("GetLedger", request).ledger
    return ledger


# --- paging --------------------------------------------------------------------------------------


def test_ledger_pages_neither_repeat_nor_skip_while_ledgers_open(budget: Peer) -> None:
    name = fresh_name("pager")
    for dataset in ("b", "d", "f", "h"):
        open_ledger(budget, name, dataset, approx("1", "0"))
    request = budget_pb2.ListLedgersRequest(user=name, page_size=2)
    first = budget.call("ListLedgers", request)
    assert [lg.dataset for lg in first.ledgers] == ["b", "d"] and first.next_page_token
    # Between two page reads: one ledger sorts before the pages read so far, one after.
    open_ledger(budget, name, "a", approx("1", "0"))
    open_ledger(budget, name, "e", approx("1", "0"))
    seen = [lg.dataset for lg in first.ledgers]
    request.page_token = first.next_page_token
    while request.page_token:
        page = budget.call("ListLedgers", request)
        seen += [lg.dataset for lg in page.ledgers]
        request.page_token = page.next_page_token
    # An offset token would have served "d" again (everything after it moved one place on).
    assert seen == ["b", "d", "e", "f", "h"]


def test_entry_pages_continue_after_the_last_entry_read(budget: Peer, user: str) -> None:
    request = budget_pb2.ListLedgerEntriesRequest(user=user, dataset="penguins", page_size=1)
    first = budget.call("ListLedgerEntries", request)
    assert [e.seq for e in first.entries] == [1] and not first.next_page_token
    reserve(budget, f"{user}-q1", user, approx("1", "0"))
    reserve(budget, f"{user}-q2", user, approx("1", "0"))
    second = budget.call("ListLedgerEntries", request)
    assert [e.seq for e in second.entries] == [1] and second.next_page_token
    request.page_token = second.next_page_token
    third = budget.call("ListLedgerEntries", request)
    assert [e.seq for e in third.entries] == [2]
    budget.call("CommitReservation", budget_pb2.CommitReservationRequest(query_id=f"{user}-q1"))
    seqs = [e.seq for e in third.entries]
    request.page_token = third.next_page_token
    while request.page_token:
        page = budget.call("ListLedgerEntries", request)
        seqs += [e.seq for e in page.entries]
        request.page_token = page.next_page_token
    assert seqs == [2, 3, 4]


def test_a_forged_page_token_with_a_key_of_another_shape_is_refused(budget: Peer) -> None:
    name = fresh_name("forger")
    for dataset in ("a", "b"):
        open_ledger(budget, name, dataset, approx("1", "0"))
    ledgers = budget.call("ListLedgers", budget_pb2.ListLedgersRequest(user=name, page_size=1))
    entries = budget.call(
        "ListLedgerEntries",
        budget_pb2.ListLedgerEntriesRequest(user=name, dataset="a", page_size=1),
    )
    assert ledgers.next_page_token and not entries.next_page_token
    # Tokens are bound to their list by a digest anyone can compute: a forged key of the wrong
    # type (a number where a dataset name belongs) must not reach SQL.
    payload = json.loads(base64.urlsafe_b64decode(ledgers.next_page_token))
    payload["after"] = [7]
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    refused(
        lambda: budget.call(
            "ListLedgers", budget_pb2.ListLedgersRequest(user=name, page_token=forged)
        ),
        Code.INVALID_ARGUMENT,
        "PAGE_TOKEN_INVALID",
    )


# --- retries are answered once -------------------------------------------------------------------


def test_ledger_retries_are_answered_once(budget: Peer) -> None:
    name = fresh_name("retry")
    opening = budget_pb2.OpenLedgerRequest(
        user=name, dataset="penguins", allocation=approx("5", "0.001"), actor="admin",
        request_id=f"{name}-open",
    )  # fmt: skip
    opened = budget.call("OpenLedger", opening).ledger
    adjust = budget_pb2.AdjustAllocationRequest(
        user=name, dataset="penguins", allocation=approx("6", "0.001"), actor="admin",
        request_id=f"{name}-adjust",
    )  # fmt: skip
    adjusted = budget.call("AdjustAllocation", adjust).ledger
    assert budget.call("OpenLedger", opening).ledger == opened  # the first answer, as it was
    assert budget.call("AdjustAllocation", adjust).ledger == adjusted
    after = get_ledger(budget, name)
    assert after.entry_count == 2 and after.allocation == approx("6", "0.001")
    # the same id with another request changes nothing
    other = budget_pb2.AdjustAllocationRequest(
        user=name, dataset="penguins", allocation=approx("9", "0.001"), actor="admin",
        request_id=f"{name}-adjust",
    )  # fmt: skip
    metadata = refused(
        lambda: budget.call("AdjustAllocation", other), Code.INVALID_ARGUMENT, "REQUEST_ID_REUSED"
    )
    assert metadata == {"requestId": f"{name}-adjust"}
    assert get_ledger(budget, name) == after


def test_user_and_cap_retries_are_answered_once(budget: Peer, user: str) -> None:
    freeze = budget_pb2.FreezeUserRequest(user=user, actor="admin", request_id=f"{user}-f")
    frozen = budget.call("FreezeUser", freeze)
    budget.call("UnfreezeUser", budget_pb2.UnfreezeUserRequest(user=user, actor="admin"))
    assert budget.call("FreezeUser", freeze) == frozen  # the first answer, not a new freeze
    state = budget.call("GetUserState", budget_pb2.GetUserStateRequest(user=user)).user
    assert not state.frozen and get_ledger(budget, user).entry_count == 3

    dataset = fresh_name("capped")
    cap = budget_pb2.SetDatasetCapRequest(
        dataset=dataset, cap=approx("2", "0"), actor="admin", request_id=f"{user}-cap"
    )
    first = budget.call("SetDatasetCap", cap).cap
    budget.call(
        "SetDatasetCap",
        budget_pb2.SetDatasetCapRequest(dataset=dataset, cap=approx("3", "0"), actor="admin"),
    )
    assert budget.call("SetDatasetCap", cap).cap == first
    now = budget.call("GetDatasetCap", budget_pb2.GetDatasetCapRequest(dataset=dataset)).cap
    assert now.cap == approx("3", "0")


def test_reservation_retries_are_answered_once_by_query_id(budget: Peer, user: str) -> None:
    """Without a request id, the query id makes each reservation call count once."""
    query_id = f"{user}-q1"
    first = reserve(budget, query_id, user, approx("1", "0"))
    assert reserve(budget, query_id, user, approx("1", "0")) == first
    assert get_ledger(budget, user).reserved == approx("1", "0")
    mark = budget_pb2.MarkReservationAccessedRequest(query_id=query_id)
    commit = budget_pb2.CommitReservationRequest(query_id=query_id)
    for method, request in (("MarkReservationAccessed", mark), ("CommitReservation", commit)):
        once = budget.call(method, request).reservation
        assert budget.call(method, request).reservation == once
    ledger = get_ledger(budget, user)
    assert ledger.spent == approx("1", "0") and ledger.reserved == approx("0", "0")
    release = budget_pb2.ReleaseReservationRequest(query_id=f"{user}-q2")
    reserve(budget, f"{user}-q2", user, approx("2", "0"))
    released = budget.call("ReleaseReservation", release).reservation
    assert budget.call("ReleaseReservation", release).reservation == released
    ledger = get_ledger(budget, user)
    # allocation, reserve q1, access, commit, reserve q2, release: one entry per call
    assert ledger.entry_count == 6 and ledger.remaining == approx("9", "0.001")
    # a query id is bound to its reservation: another cost under it changes nothing
    refused(
        lambda: reserve(budget, query_id, user, approx("2", "0")),
        Code.ABORTED,
        "QUERY_ID_CONFLICT",
    )
    assert get_ledger(budget, user) == ledger


def test_sweep_retries_are_answered_once(database_url: str, tmp_path: Path) -> None:
    # A service that sweeps only on start-up and when asked, so the sweep below is the one that
    # settles the reservation.
    service = BudgetProcess(database_url, tmp_path / "budget.log", sweep_interval_seconds="3600")
    budget = service.start().peer()
    try:
        open_ledger(budget, "alice", "penguins", approx("10", "0.001"))
        reserve(budget, "q1", "alice", approx("1", "0"), ttl_seconds=1)
        time.sleep(1.1)
        sweep = budget_pb2.SweepReservationsRequest(request_id="sweep-1")
        first = budget.call("SweepReservations", sweep)
        assert list(first.released) == ["q1"]
        assert budget.call("SweepReservations", sweep) == first  # the first answer again
        fresh = budget.call("SweepReservations", budget_pb2.SweepReservationsRequest())
        assert list(fresh.released) == []  # nothing was left to settle
        assert get_ledger(budget, "alice").entry_count == 3  # allocation, reservation, release
    finally:
        budget.close()
        service.kill()
