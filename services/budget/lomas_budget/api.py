"""Thin servicer of the internal BudgetService: convert, call the ledger, convert.

It runs on the blocking server (`lomas_common.blocking_server`): the ledger blocks on its database.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from lomas.budget.v1 import budget_pb2 as pb
from lomas.budget.v1 import budget_pb2_grpc
from lomas_budget.convert import (
    after_dataset,
    after_seq,
    dataset_cap_to_proto,
    delta_from_text,
    entry_to_proto,
    ledger_to_proto,
    optional_loss_from_proto,
    reservation_to_proto,
    settle_options,
    user_state_to_proto,
)
from lomas_budget.ledger import BudgetLedger
from lomas_budget.model import UserState
from lomas_common.convert import KeysetPage, privacy_loss_from_proto

Context = grpc.ServicerContext


class BudgetServicer(budget_pb2_grpc.BudgetServiceServicer):
    def __init__(self, ledger: BudgetLedger) -> None:
        self._ledger = ledger

    def OpenLedger(self, request: pb.OpenLedgerRequest, context: Context) -> pb.OpenLedgerResponse:
        allocation = privacy_loss_from_proto(request.allocation, field="allocation")
        spent = optional_loss_from_proto(request, "already_spent")
        balance = self._ledger.open_ledger(
            request.user,
            request.dataset,
            allocation,
            spent,
            request.actor,
            request.request_id or None,
        )
        return pb.OpenLedgerResponse(ledger=ledger_to_proto(balance))

    def GetLedger(self, request: pb.GetLedgerRequest, context: Context) -> pb.GetLedgerResponse:
        delta = delta_from_text(request.delta)
        balance = self._ledger.get_balance(request.user, request.dataset)
        return pb.GetLedgerResponse(ledger=ledger_to_proto(balance, delta))

    def ListLedgers(
        self, request: pb.ListLedgersRequest, context: Context
    ) -> pb.ListLedgersResponse:
        delta = delta_from_text(request.delta)
        page = KeysetPage.of_request(request, request.user)
        balances, has_more = self._ledger.list_balances(
            request.user, after_dataset=after_dataset(page), limit=page.limit
        )
        last = (balances[-1].dataset,) if balances else None
        return pb.ListLedgersResponse(
            ledgers=[ledger_to_proto(b, delta) for b in balances],
            next_page_token=page.next_token(last, has_more=has_more),
        )

    def ReserveBudget(
        self, request: pb.ReserveBudgetRequest, context: Context
    ) -> pb.ReserveBudgetResponse:
        cost = privacy_loss_from_proto(request.cost, field="cost")
        reservation = self._ledger.reserve(
            request.query_id,
            request.user,
            request.dataset,
            cost,
            request.actor,
            owner=request.owner or None,
            ttl_seconds=request.ttl_seconds or None,
            request_id=request.request_id or None,
        )
        return pb.ReserveBudgetResponse(reservation=reservation_to_proto(reservation))

    def MarkReservationAccessed(
        self, request: pb.MarkReservationAccessedRequest, context: Context
    ) -> pb.MarkReservationAccessedResponse:
        reservation = self._ledger.mark_accessed(
            request.query_id,
            actor=request.actor or "worker",
            request_id=request.request_id or None,
            expected_cost=optional_loss_from_proto(request, "expected_cost"),
        )
        return pb.MarkReservationAccessedResponse(reservation=reservation_to_proto(reservation))

    def CommitReservation(
        self, request: pb.CommitReservationRequest, context: Context
    ) -> pb.CommitReservationResponse:
        reservation = self._ledger.commit(request.query_id, **settle_options(request))
        return pb.CommitReservationResponse(reservation=reservation_to_proto(reservation))

    def ReleaseReservation(
        self, request: pb.ReleaseReservationRequest, context: Context
    ) -> pb.ReleaseReservationResponse:
        reservation = self._ledger.release(request.query_id, **settle_options(request))
        return pb.ReleaseReservationResponse(reservation=reservation_to_proto(reservation))

    def VerifyLedgers(
        self, request: pb.VerifyLedgersRequest, context: Context
    ) -> pb.VerifyLedgersResponse:
        report = self._ledger.verify()
        return pb.VerifyLedgersResponse(
            ledgers_checked=report.ledgers_checked,
            entries_checked=report.entries_checked,
            problems=report.problems,
        )

    def AdjustAllocation(
        self, request: pb.AdjustAllocationRequest, context: Context
    ) -> pb.AdjustAllocationResponse:
        allocation = privacy_loss_from_proto(request.allocation, field="allocation")
        balance = self._ledger.adjust_allocation(
            request.user,
            request.dataset,
            allocation,
            request.actor,
            request.reason,
            request.request_id or None,
        )
        return pb.AdjustAllocationResponse(ledger=ledger_to_proto(balance))

    def FreezeUser(self, request: pb.FreezeUserRequest, context: Context) -> pb.FreezeUserResponse:
        user, ledgers = self._change_freeze(self._ledger.freeze_user, request)
        return pb.FreezeUserResponse(user=user, ledgers=ledgers)

    def UnfreezeUser(
        self, request: pb.UnfreezeUserRequest, context: Context
    ) -> pb.UnfreezeUserResponse:
        user, ledgers = self._change_freeze(self._ledger.unfreeze_user, request)
        return pb.UnfreezeUserResponse(user=user, ledgers=ledgers)

    def GetReservation(
        self, request: pb.GetReservationRequest, context: Context
    ) -> pb.GetReservationResponse:
        reservation = self._ledger.get_reservation(request.query_id)
        return pb.GetReservationResponse(reservation=reservation_to_proto(reservation))

    def GetUserState(
        self, request: pb.GetUserStateRequest, context: Context
    ) -> pb.GetUserStateResponse:
        state = self._ledger.get_user(request.user)
        return pb.GetUserStateResponse(user=user_state_to_proto(state))

    def SetDatasetCap(
        self, request: pb.SetDatasetCapRequest, context: Context
    ) -> pb.SetDatasetCapResponse:
        cap = optional_loss_from_proto(request, "cap")
        updated = self._ledger.set_dataset_cap(
            request.dataset, cap, request.actor, request.reason, request.request_id or None
        )
        return pb.SetDatasetCapResponse(cap=dataset_cap_to_proto(updated))

    def GetDatasetCap(
        self, request: pb.GetDatasetCapRequest, context: Context
    ) -> pb.GetDatasetCapResponse:
        cap = self._ledger.get_dataset_cap(request.dataset)
        return pb.GetDatasetCapResponse(cap=dataset_cap_to_proto(cap))

    def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Context
    ) -> pb.ListLedgerEntriesResponse:
        page = KeysetPage.of_request(request, request.user, request.dataset)
        balance, entries, has_more = self._ledger.list_entries(
            request.user, request.dataset, after_seq=after_seq(page), limit=page.limit
        )
        last = (entries[-1].seq,) if entries else None
        return pb.ListLedgerEntriesResponse(
            ledger=ledger_to_proto(balance),
            entries=[entry_to_proto(balance, entry) for entry in entries],
            next_page_token=page.next_token(last, has_more=has_more),
        )

    def SweepReservations(
        self, request: pb.SweepReservationsRequest, context: Context
    ) -> pb.SweepReservationsResponse:
        report = self._ledger.sweep(request_id=request.request_id or None)
        return pb.SweepReservationsResponse(released=report.released, committed=report.committed)

    @staticmethod
    def _change_freeze(
        change: Callable[[str, str, str, str | None], UserState],
        request: pb.FreezeUserRequest | pb.UnfreezeUserRequest,
    ) -> tuple[pb.UserState, list[pb.Ledger]]:
        """FreezeUser and UnfreezeUser: `change` (the ledger's freeze_user or unfreeze_user) with
        the same request fields, and the same answer (the user and its ledgers)."""
        state = change(request.user, request.actor, request.reason, request.request_id or None)
        return user_state_to_proto(state), [ledger_to_proto(b) for b in state.ledgers]
