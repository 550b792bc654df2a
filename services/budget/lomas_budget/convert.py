"""Budget messages <-> ledger domain values (the one module that touches both)."""

from __future__ import annotations

from lomas.budget.v1 import budget_pb2
from lomas_budget.ledger import LedgerBalance, Reservation, ReservationState
from lomas_common.convert import DEFINITION_TO_PROTO, privacy_loss_to_proto

_STATES = {
    ReservationState.RESERVED: budget_pb2.RESERVATION_STATE_RESERVED,
    ReservationState.ACCESSED: budget_pb2.RESERVATION_STATE_ACCESSED,
    ReservationState.COMMITTED: budget_pb2.RESERVATION_STATE_COMMITTED,
    ReservationState.RELEASED: budget_pb2.RESERVATION_STATE_RELEASED,
}


def ledger_to_proto(balance: LedgerBalance) -> budget_pb2.Ledger:
    return budget_pb2.Ledger(
        user=balance.user,
        dataset=balance.dataset,
        definition=DEFINITION_TO_PROTO[balance.definition],
        allocation=privacy_loss_to_proto(balance.allocation),
        spent=privacy_loss_to_proto(balance.spent),
        reserved=privacy_loss_to_proto(balance.reserved),
        remaining=privacy_loss_to_proto(balance.remaining),
    )


def reservation_to_proto(reservation: Reservation) -> budget_pb2.Reservation:
    return budget_pb2.Reservation(
        query_id=reservation.query_id,
        user=reservation.user,
        dataset=reservation.dataset,
        cost=privacy_loss_to_proto(reservation.cost),
        state=_STATES[reservation.state],
    )
