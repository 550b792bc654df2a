"""Budget messages <-> ledger domain values (the one module that touches both)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from lomas.budget.v1 import budget_pb2
from lomas.common.v1 import privacy_pb2
from lomas_budget import model
from lomas_budget.accounting import approx_dp_view
from lomas_budget.reservations import SettleOptions
from lomas_common.convert import (
    DEFINITION_TO_PROTO,
    KeysetPage,
    privacy_loss_from_proto,
    privacy_loss_to_proto,
)
from lomas_common.errors import InvalidArgument
from lomas_common.privacy import PrivacyLoss, PrivacyValueError, format_decimal, parse_decimal

_STATES = {
    model.ReservationState.RESERVED: budget_pb2.RESERVATION_STATE_RESERVED,
    model.ReservationState.ACCESSED: budget_pb2.RESERVATION_STATE_ACCESSED,
    model.ReservationState.COMMITTED: budget_pb2.RESERVATION_STATE_COMMITTED,
    model.ReservationState.RELEASED: budget_pb2.RESERVATION_STATE_RELEASED,
}
_KINDS = {
    model.EntryKind.ALLOCATION: budget_pb2.LEDGER_ENTRY_KIND_ALLOCATION,
    model.EntryKind.IMPORTED_SPEND: budget_pb2.LEDGER_ENTRY_KIND_IMPORTED_SPEND,
    model.EntryKind.ADJUSTMENT: budget_pb2.LEDGER_ENTRY_KIND_ADJUSTMENT,
    model.EntryKind.RESERVATION: budget_pb2.LEDGER_ENTRY_KIND_RESERVATION,
    model.EntryKind.ACCESS: budget_pb2.LEDGER_ENTRY_KIND_ACCESS,
    model.EntryKind.COMMIT: budget_pb2.LEDGER_ENTRY_KIND_COMMIT,
    model.EntryKind.RELEASE: budget_pb2.LEDGER_ENTRY_KIND_RELEASE,
    model.EntryKind.FREEZE: budget_pb2.LEDGER_ENTRY_KIND_FREEZE,
    model.EntryKind.UNFREEZE: budget_pb2.LEDGER_ENTRY_KIND_UNFREEZE,
}


def optional_loss_from_proto(request: Message, field: str) -> PrivacyLoss | None:
    """The privacy loss in an optional field of `request` (None when the field is not set)."""
    if not request.HasField(field):
        return None
    loss: privacy_pb2.PrivacyLoss = getattr(request, field)
    return privacy_loss_from_proto(loss, field=field)


def settle_options(
    request: budget_pb2.CommitReservationRequest | budget_pb2.ReleaseReservationRequest,
) -> SettleOptions:
    """What `commit` and `release` take from their requests beside the query id."""
    return SettleOptions(
        actor=request.actor or "worker",
        reason=request.reason,
        request_id=request.request_id or None,
    )


def delta_from_text(text: str) -> Decimal | None:
    """The optional delta of a ledger view ("" means none); INVALID_ARGUMENT unless in (0, 1)."""
    if not text:
        return None
    try:
        delta = parse_decimal(text, name="delta")
    except PrivacyValueError as error:
        raise InvalidArgument(
            str(error), reason="PRIVACY_LOSS_INVALID", metadata={"field": "delta"}
        ) from None
    if not 0 < delta < 1:
        raise InvalidArgument(
            "delta must be strictly between 0 and 1",
            reason="PRIVACY_LOSS_INVALID",
            metadata={"field": "delta"},
        )
    return delta


def _page_token_invalid() -> InvalidArgument:
    return InvalidArgument("page_token is not valid for this list", reason="PAGE_TOKEN_INVALID")


# Page tokens are bound to their list by a digest anyone can compute, so a forged token may carry a
# key of the wrong shape: each list checks its key's shape before it reaches SQL.


def after_dataset(page: KeysetPage) -> str | None:
    """The dataset name a ListLedgers page starts after (None: from the first)."""
    if page.after is None:
        return None
    match page.after:
        case (str() as dataset,):
            return dataset
    raise _page_token_invalid()


def after_seq(page: KeysetPage) -> int:
    """The entry number a ListLedgerEntries page starts after (0: from the first)."""
    if page.after is None:
        return 0
    match page.after:
        case (int() as seq,) if seq > 0:
            return seq
    raise _page_token_invalid()


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SECOND = dt.timedelta(seconds=1)


def timestamp(text: str) -> timestamp_pb2.Timestamp | None:
    """A stored ISO-8601 UTC text as a Timestamp (None when empty)."""
    if not text:
        return None
    moment = dt.datetime.fromisoformat(text)
    return timestamp_pb2.Timestamp(
        seconds=(moment - _EPOCH) // _SECOND, nanos=moment.microsecond * 1000
    )


def ledger_to_proto(
    balance: model.LedgerBalance, delta: Decimal | None = None
) -> budget_pb2.Ledger:
    message = budget_pb2.Ledger(
        user=balance.user,
        dataset=balance.dataset,
        definition=DEFINITION_TO_PROTO[balance.definition],
        allocation=privacy_loss_to_proto(balance.allocation),
        spent=privacy_loss_to_proto(balance.spent),
        reserved=privacy_loss_to_proto(balance.reserved),
        remaining=privacy_loss_to_proto(balance.remaining),
        frozen=balance.frozen,
        capped=balance.capped,
        entry_count=balance.entry_count,
        head_hash=balance.head_hash,
        create_time=timestamp(balance.created_at),
    )
    if delta is not None:
        view = approx_dp_view(balance.remaining, delta)
        if view is not None:
            message.remaining_at_delta.CopyFrom(
                privacy_pb2.ApproxDp(
                    epsilon=format_decimal(view.epsilon), delta=format_decimal(view.delta)
                )
            )
    return message


def reservation_to_proto(reservation: model.Reservation) -> budget_pb2.Reservation:
    return budget_pb2.Reservation(
        query_id=reservation.query_id,
        user=reservation.user,
        dataset=reservation.dataset,
        cost=privacy_loss_to_proto(reservation.cost),
        state=_STATES[reservation.state],
        owner=reservation.owner,
        expire_time=timestamp(reservation.expires_at),
        create_time=timestamp(reservation.created_at),
        update_time=timestamp(reservation.updated_at),
    )


def _signed_loss(balance: model.LedgerBalance, entry: model.LedgerEntry) -> privacy_pb2.PrivacyLoss:
    """An entry's amount in its ledger's unit (components may be negative in adjustments, which a
    `PrivacyLoss` value refuses, so it is built from the texts directly)."""
    definition = balance.definition
    zero = PrivacyLoss.zero(definition)
    message = privacy_loss_to_proto(zero)
    kind = message.WhichOneof("loss")
    assert kind is not None
    part = getattr(message, kind)
    for name in zero.components():
        setattr(part, name, format_decimal(getattr(entry, name)))
    return message


def entry_to_proto(
    balance: model.LedgerBalance, entry: model.LedgerEntry
) -> budget_pb2.LedgerEntry:
    return budget_pb2.LedgerEntry(
        seq=entry.seq,
        kind=_KINDS[entry.kind],
        amount=_signed_loss(balance, entry),
        query_id=entry.query_id or "",
        actor=entry.actor,
        reason=entry.reason,
        create_time=timestamp(entry.created_at),
        prev_hash=entry.prev_hash,
        hash=entry.hash,
    )


def user_state_to_proto(state: model.UserState) -> budget_pb2.UserState:
    return budget_pb2.UserState(
        user=state.user,
        frozen=state.frozen,
        actor=state.actor,
        reason=state.reason,
        update_time=timestamp(state.updated_at),
    )


def dataset_cap_to_proto(cap: model.DatasetCap) -> budget_pb2.DatasetCap:
    message = budget_pb2.DatasetCap(
        dataset=cap.dataset,
        actor=cap.actor,
        reason=cap.reason,
        update_time=timestamp(cap.updated_at),
    )
    if cap.cap is not None and cap.used is not None and cap.remaining is not None:
        message.cap.CopyFrom(privacy_loss_to_proto(cap.cap))
        message.used.CopyFrom(privacy_loss_to_proto(cap.used))
        message.remaining.CopyFrom(privacy_loss_to_proto(cap.remaining))
    return message
