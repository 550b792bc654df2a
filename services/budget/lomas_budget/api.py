"""Thin servicer of the internal BudgetService: convert, call the ledger, convert.

It runs on the blocking server (`lomas_common.blocking_server`): the ledger blocks on its database.
"""

from __future__ import annotations

import grpc

from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas_budget.convert import (
    after_dataset,
    after_seq,
    dataset_cap_to_proto,
    delta_from_text,
    entry_to_proto,
    ledger_to_proto,
    reservation_to_proto,
    user_state_to_proto,
)
from lomas_budget.ledger import BudgetLedger
from lomas_common.convert import KeysetPage, privacy_loss_from_proto


class BudgetServicer(budget_pb2_grpc.BudgetServiceServicer):
    def __init__(self, ledger: BudgetLedger) -> None:
        self._ledger = ledger

    def OpenLedger(
        self, request: budget_pb2.OpenLedgerRequest, context: grpc.ServicerContext
    ) -> budget_pb2.OpenLedgerResponse:
        allocation = privacy_loss_from_proto(request.allocation, field="allocation")
        spent = (
            privacy_loss_from_proto(request.already_spent, field="already_spent")
            if request.HasField("already_spent")
            else None
        )
        balance = self._ledger.open_ledger(
            request.user,
            request.dataset,
            allocation,
            spent,
            request.actor,
            request.request_id or None,
        )
        return budget_pb2.OpenLedgerResponse(ledger=ledger_to_proto(balance))

    def GetLedger(
        self, request: budget_pb2.GetLedgerRequest, context: grpc.ServicerContext
    ) -> budget_pb2.GetLedgerResponse:
        delta = delta_from_text(request.delta)
        balance = self._ledger.get_balance(request.user, request.dataset)
        return budget_pb2.GetLedgerResponse(ledger=ledger_to_proto(balance, delta))

    def ListLedgers(
        self, request: budget_pb2.ListLedgersRequest, context: grpc.ServicerContext
    ) -> budget_pb2.ListLedgersResponse:
        delta = delta_from_text(request.delta)
        page = KeysetPage.of(request.page_size, request.page_token, "ListLedgers", request.user)
        balances, has_more = self._ledger.list_balances(
            request.user, after_dataset=after_dataset(page), limit=page.limit
        )
        last = (balances[-1].dataset,) if balances else None
        return budget_pb2.ListLedgersResponse(
            ledgers=[ledger_to_proto(b, delta) for b in balances],
            next_page_token=page.next_token(last, has_more=has_more),
        )

    def ReserveBudget(
        self, request: budget_pb2.ReserveBudgetRequest, context: grpc.ServicerContext
    ) -> budget_pb2.ReserveBudgetResponse:
        cost = privacy_loss_from_proto(request.cost, field="cost")
        reservation = self._ledger.reserve(
            request.query_id,
            request.user,
            request.dataset,
            cost,
            request.actor,
            owner=request.owner,
            ttl_seconds=request.ttl_seconds or None,
            request_id=request.request_id or None,
        )
        return budget_pb2.ReserveBudgetResponse(reservation=reservation_to_proto(reservation))

    def MarkReservationAccessed(
        self, request: budget_pb2.MarkReservationAccessedRequest, context: grpc.ServicerContext
    ) -> budget_pb2.MarkReservationAccessedResponse:
        expected = (
            privacy_loss_from_proto(request.expected_cost, field="expected_cost")
            if request.HasField("expected_cost")
            else None
        )
        reservation = self._ledger.mark_accessed(
            request.query_id,
            actor=request.actor or "worker",
            request_id=request.request_id or None,
            expected_cost=expected,
        )
        return budget_pb2.MarkReservationAccessedResponse(
            reservation=reservation_to_proto(reservation)
        )

    def CommitReservation(
        self, request: budget_pb2.CommitReservationRequest, context: grpc.ServicerContext
    ) -> budget_pb2.CommitReservationResponse:
        reservation = self._ledger.commit(
            request.query_id,
            actor=request.actor or "worker",
            reason=request.reason,
            request_id=request.request_id or None,
        )
        return budget_pb2.CommitReservationResponse(reservation=reservation_to_proto(reservation))

    def ReleaseReservation(
        self, request: budget_pb2.ReleaseReservationRequest, context: grpc.ServicerContext
    ) -> budget_pb2.ReleaseReservationResponse:
        reservation = self._ledger.release(
            request.query_id,
            actor=request.actor or "worker",
            reason=request.reason,
            request_id=request.request_id or None,
        )
        return budget_pb2.ReleaseReservationResponse(reservation=reservation_to_proto(reservation))

    def VerifyLedgers(
        self, request: budget_pb2.VerifyLedgersRequest, context: grpc.ServicerContext
    ) -> budget_pb2.VerifyLedgersResponse:
        report = self._ledger.verify()
        return budget_pb2.VerifyLedgersResponse(
            ledgers_checked=report.ledgers_checked,
            entries_checked=report.entries_checked,
            problems=report.problems,
        )

    def AdjustAllocation(
        self, request: budget_pb2.AdjustAllocationRequest, context: grpc.ServicerContext
    ) -> budget_pb2.AdjustAllocationResponse:
        allocation = privacy_loss_from_proto(request.allocation, field="allocation")
        balance = self._ledger.adjust_allocation(
            request.user,
            request.dataset,
            allocation,
            request.actor,
            request.reason,
            request.request_id or None,
        )
        return budget_pb2.AdjustAllocationResponse(ledger=ledger_to_proto(balance))

    def FreezeUser(
        self, request: budget_pb2.FreezeUserRequest, context: grpc.ServicerContext
    ) -> budget_pb2.FreezeUserResponse:
        state = self._ledger.freeze_user(
            request.user, request.actor, request.reason, request.request_id or None
        )
        return budget_pb2.FreezeUserResponse(
            user=user_state_to_proto(state), ledgers=[ledger_to_proto(b) for b in state.ledgers]
        )

    def UnfreezeUser(
        self, request: budget_pb2.UnfreezeUserRequest, context: grpc.ServicerContext
    ) -> budget_pb2.UnfreezeUserResponse:
        state = self._ledger.unfreeze_user(
            request.user, request.actor, request.reason, request.request_id or None
        )
        return budget_pb2.UnfreezeUserResponse(
            user=user_state_to_proto(state), ledgers=[ledger_to_proto(b) for b in state.ledgers]
        )

    def GetUserState(
        self, request: budget_pb2.GetUserStateRequest, context: grpc.ServicerContext
    ) -> budget_pb2.GetUserStateResponse:
        state = self._ledger.get_user(request.user)
        return budget_pb2.GetUserStateResponse(user=user_state_to_proto(state))

    def SetDatasetCap(
        self, request: budget_pb2.SetDatasetCapRequest, context: grpc.ServicerContext
    ) -> budget_pb2.SetDatasetCapResponse:
        cap = privacy_loss_from_proto(request.cap, field="cap") if request.HasField("cap") else None
        updated = self._ledger.set_dataset_cap(
            request.dataset, cap, request.actor, request.reason, request.request_id or None
        )
        return budget_pb2.SetDatasetCapResponse(cap=dataset_cap_to_proto(updated))

    def GetDatasetCap(
        self, request: budget_pb2.GetDatasetCapRequest, context: grpc.ServicerContext
    ) -> budget_pb2.GetDatasetCapResponse:
        cap = self._ledger.get_dataset_cap(request.dataset)
        return budget_pb2.GetDatasetCapResponse(cap=dataset_cap_to_proto(cap))

    def ListLedgerEntries(
        self, request: budget_pb2.ListLedgerEntriesRequest, context: grpc.ServicerContext
    ) -> budget_pb2.ListLedgerEntriesResponse:
        page = KeysetPage.of(
            request.page_size,
            request.page_token,
            "ListLedgerEntries",
            request.user,
            request.dataset,
        )
        balance, entries, has_more = self._ledger.list_entries(
            request.user, request.dataset, after_seq=after_seq(page), limit=page.limit
        )
        last = (entries[-1].seq,) if entries else None
        return budget_pb2.ListLedgerEntriesResponse(
            ledger=ledger_to_proto(balance),
            entries=[entry_to_proto(balance, entry) for entry in entries],
            next_page_token=page.next_token(last, has_more=has_more),
        )

    def SweepReservations(
        self, request: budget_pb2.SweepReservationsRequest, context: grpc.ServicerContext
    ) -> budget_pb2.SweepReservationsResponse:
        report = self._ledger.sweep(request_id=request.request_id or None)
        return budget_pb2.SweepReservationsResponse(
            released=report.released, committed=report.committed
        )
