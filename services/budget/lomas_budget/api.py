"""Thin servicer of the internal BudgetService: convert, call the ledger (off the event loop), convert."""

from __future__ import annotations

import asyncio

from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas_budget.convert import ledger_to_proto, reservation_to_proto
from lomas_budget.ledger import BudgetLedger
from lomas_common.convert import next_page_token, page_bounds, privacy_loss_from_proto


class BudgetServicer(budget_pb2_grpc.BudgetServiceServicer):
    def __init__(self, ledger: BudgetLedger) -> None:
        self._ledger = ledger

    async def OpenLedger(self, request, context):  # type: ignore[no-untyped-def]
        allocation = privacy_loss_from_proto(request.allocation, field="allocation")
        spent = (
            privacy_loss_from_proto(request.already_spent, field="already_spent")
            if request.HasField("already_spent")
            else None
        )
        balance = await asyncio.to_thread(
            self._ledger.open_ledger,
            request.user,
            request.dataset,
            allocation,
            spent,
            request.actor,
            request.request_id or None,
        )
        return budget_pb2.OpenLedgerResponse(ledger=ledger_to_proto(balance))

    async def GetLedger(self, request, context):  # type: ignore[no-untyped-def]
        balance = await asyncio.to_thread(self._ledger.get_balance, request.user, request.dataset)
        return budget_pb2.GetLedgerResponse(ledger=ledger_to_proto(balance))

    async def ListLedgers(self, request, context):  # type: ignore[no-untyped-def]
        offset, limit = page_bounds(request.page_size, request.page_token)
        balances = await asyncio.to_thread(self._ledger.list_balances, request.user)
        page = balances[offset : offset + limit]
        return budget_pb2.ListLedgersResponse(
            ledgers=[ledger_to_proto(b) for b in page],
            next_page_token=next_page_token(
                offset, len(page), has_more=offset + limit < len(balances)
            ),
        )

    async def ReserveBudget(self, request, context):  # type: ignore[no-untyped-def]
        cost = privacy_loss_from_proto(request.cost, field="cost")
        reservation = await asyncio.to_thread(
            self._ledger.reserve,
            request.query_id,
            request.user,
            request.dataset,
            cost,
            request.actor,
        )
        return budget_pb2.ReserveBudgetResponse(reservation=reservation_to_proto(reservation))

    async def MarkReservationAccessed(self, request, context):  # type: ignore[no-untyped-def]
        reservation = await asyncio.to_thread(self._ledger.mark_accessed, request.query_id)
        return budget_pb2.MarkReservationAccessedResponse(
            reservation=reservation_to_proto(reservation)
        )

    async def CommitReservation(self, request, context):  # type: ignore[no-untyped-def]
        reservation = await asyncio.to_thread(self._ledger.commit, request.query_id)
        return budget_pb2.CommitReservationResponse(reservation=reservation_to_proto(reservation))

    async def ReleaseReservation(self, request, context):  # type: ignore[no-untyped-def]
        reservation = await asyncio.to_thread(self._ledger.release, request.query_id)
        return budget_pb2.ReleaseReservationResponse(reservation=reservation_to_proto(reservation))

    async def VerifyLedgers(self, request, context):  # type: ignore[no-untyped-def]
        problems, checked = await asyncio.to_thread(self._verify)
        return budget_pb2.VerifyLedgersResponse(ledgers_checked=checked, problems=problems)

    def _verify(self) -> tuple[list[str], int]:
        return self._ledger.verify_all(), self._ledger.count_ledgers()
