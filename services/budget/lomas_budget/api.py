"""Thin servicer of the internal BudgetService: convert, call the ledger, convert.

It runs on the blocking server (`lomas_common.blocking_server`): the ledger blocks on its database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar, overload

import grpc
from google.protobuf.message import Message

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

ValueT = TypeVar("ValueT")
ResponseT = TypeVar("ResponseT", bound=Message)
ResponseT_co = TypeVar("ResponseT_co", covariant=True)


class RpcHandler(Protocol[ResponseT_co]):
    """A servicer method as gRPC calls it (bound to its servicer)."""

    def __call__(self, request: Message, context: Context) -> ResponseT_co: ...


class LedgerLookup(Generic[ValueT, ResponseT]):
    """A BudgetService method that reads one value from the ledger by one field of its request
    and answers it converted, in the response's one field. One statement in the servicer's class
    body: `GetUserState = LedgerLookup(BudgetLedger.get_user, "user", user_state_to_proto,
    pb.GetUserStateResponse)` reads the ledger's `get_user(request.user)` and answers
    `GetUserStateResponse(user=user_state_to_proto(state))`.

    The response type is given, so that the type checker holds it to the RPC's (and `convert` to
    what `read` returns); the field it fills is the response's only one, found when the class is
    made."""

    def __init__(
        self,
        read: Callable[[BudgetLedger, str], ValueT],
        key_field: str,
        convert: Callable[[ValueT], Message],
        response_type: type[ResponseT],
    ) -> None:
        self._read = read
        self._key_field = key_field
        self._convert = convert
        self._response_type = response_type
        (only_field,) = response_type.DESCRIPTOR.fields
        self._answer_field = only_field.name

    @overload
    def __get__(self, servicer: None, owner: type) -> LedgerLookup[ValueT, ResponseT]: ...

    @overload
    def __get__(self, servicer: BudgetServicer, owner: type) -> RpcHandler[ResponseT]: ...

    def __get__(
        self, servicer: BudgetServicer | None, owner: type
    ) -> LedgerLookup[ValueT, ResponseT] | RpcHandler[ResponseT]:
        if servicer is None:
            return self

        def handler(request: Message, context: Context) -> ResponseT:
            value = self._read(servicer.ledger, getattr(request, self._key_field))
            return self._response_type(**{self._answer_field: self._convert(value)})

        return handler


class BudgetServicer(budget_pb2_grpc.BudgetServiceServicer):
    def __init__(self, ledger: BudgetLedger) -> None:
        self.ledger = ledger

    def OpenLedger(self, request: pb.OpenLedgerRequest, context: Context) -> pb.OpenLedgerResponse:
        allocation = privacy_loss_from_proto(request.allocation, field="allocation")
        spent = optional_loss_from_proto(request, "already_spent")
        balance = self.ledger.open_ledger(
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
        balance = self.ledger.get_balance(request.user, request.dataset)
        return pb.GetLedgerResponse(ledger=ledger_to_proto(balance, delta))

    def ListLedgers(
        self, request: pb.ListLedgersRequest, context: Context
    ) -> pb.ListLedgersResponse:
        delta = delta_from_text(request.delta)
        page = KeysetPage.of_request(request, request.user)
        balances, has_more = self.ledger.list_balances(
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
        reservation = self.ledger.reserve(
            request.query_id,
            request.user,
            request.dataset,
            privacy_loss_from_proto(request.cost, field="cost"),
            request.actor,
            owner=request.owner or None,
            ttl_seconds=request.ttl_seconds or None,
            request_id=request.request_id or None,
        )
        return pb.ReserveBudgetResponse(reservation=reservation_to_proto(reservation))

    def MarkReservationAccessed(
        self, request: pb.MarkReservationAccessedRequest, context: Context
    ) -> pb.MarkReservationAccessedResponse:
        reservation = self.ledger.mark_accessed(
            request.query_id,
            actor=request.actor or "worker",
            request_id=request.request_id or None,
            expected_cost=optional_loss_from_proto(request, "expected_cost"),
            charge=request.charge,
        )
        return pb.MarkReservationAccessedResponse(reservation=reservation_to_proto(reservation))

    def CommitReservation(
        self, request: pb.CommitReservationRequest, context: Context
    ) -> pb.CommitReservationResponse:
        reservation = self.ledger.commit(request.query_id, **settle_options(request))
        return pb.CommitReservationResponse(reservation=reservation_to_proto(reservation))

    def ReleaseReservation(
        self, request: pb.ReleaseReservationRequest, context: Context
    ) -> pb.ReleaseReservationResponse:
        reservation = self.ledger.release(request.query_id, **settle_options(request))
        return pb.ReleaseReservationResponse(reservation=reservation_to_proto(reservation))

    def VerifyLedgers(
        self, request: pb.VerifyLedgersRequest, context: Context
    ) -> pb.VerifyLedgersResponse:
        report = self.ledger.verify()
        return pb.VerifyLedgersResponse(
            ledgers_checked=report.ledgers_checked,
            entries_checked=report.entries_checked,
            problems=report.problems,
        )

    def AdjustAllocation(
        self, request: pb.AdjustAllocationRequest, context: Context
    ) -> pb.AdjustAllocationResponse:
        allocation = privacy_loss_from_proto(request.allocation, field="allocation")
        balance = self.ledger.adjust_allocation(
            request.user,
            request.dataset,
            allocation,
            request.actor,
            request.reason,
            request.request_id or None,
        )
        return pb.AdjustAllocationResponse(ledger=ledger_to_proto(balance))

    def FreezeUser(self, request: pb.FreezeUserRequest, context: Context) -> pb.FreezeUserResponse:
        user, ledgers = self._change_freeze(self.ledger.freeze_user, request)
        return pb.FreezeUserResponse(user=user, ledgers=ledgers)

    def UnfreezeUser(
        self, request: pb.UnfreezeUserRequest, context: Context
    ) -> pb.UnfreezeUserResponse:
        user, ledgers = self._change_freeze(self.ledger.unfreeze_user, request)
        return pb.UnfreezeUserResponse(user=user, ledgers=ledgers)

    # Lookups: one ledger read by one request field, answered converted (`LedgerLookup`).
    GetReservation = LedgerLookup(
        BudgetLedger.get_reservation, "query_id", reservation_to_proto, pb.GetReservationResponse
    )
    GetUserState = LedgerLookup(
        BudgetLedger.get_user, "user", user_state_to_proto, pb.GetUserStateResponse
    )
    GetDatasetCap = LedgerLookup(
        BudgetLedger.get_dataset_cap, "dataset", dataset_cap_to_proto, pb.GetDatasetCapResponse
    )

    def SetDatasetCap(
        self, request: pb.SetDatasetCapRequest, context: Context
    ) -> pb.SetDatasetCapResponse:
        cap = optional_loss_from_proto(request, "cap")
        updated = self.ledger.set_dataset_cap(
            request.dataset, cap, request.actor, request.reason, request.request_id or None
        )
        return pb.SetDatasetCapResponse(cap=dataset_cap_to_proto(updated))

    def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Context
    ) -> pb.ListLedgerEntriesResponse:
        page = KeysetPage.of_request(request, request.user, request.dataset)
        balance, entries, has_more = self.ledger.list_entries(
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
        report = self.ledger.sweep(request_id=request.request_id or None)
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
