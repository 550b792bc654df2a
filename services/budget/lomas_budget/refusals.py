"""The ledger's refusals that more than one operation raises, in one place (reasons are values of
`lomas.common.v1.ErrorReason`)."""

from __future__ import annotations

from lomas_budget.accounting import charge_in_unit
from lomas_budget.model import Reservation
from lomas_common.errors import FailedPrecondition, InvalidArgument, NotFound
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss


def require(**values: str | None) -> None:
    """FIELD_REQUIRED for the first empty argument."""
    for name, value in values.items():
        if not value:
            raise InvalidArgument(
                f"{name} must not be empty",
                reason="FIELD_REQUIRED",
                metadata={"field": name},
            )


def ledger_not_found() -> NotFound:
    return NotFound("no budget ledger exists for this user and dataset", reason="LEDGER_NOT_FOUND")


def reservation_not_found(query_id: str) -> NotFound:
    return NotFound(
        "no reservation exists for this query id",
        reason="RESERVATION_NOT_FOUND",
        metadata={"queryId": query_id},
    )


def reservation_released(query_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        "the reservation was released",
        reason="RESERVATION_RELEASED",
        metadata={"queryId": query_id},
    )


def cap_mismatch(cap: PrivacyDefinition, ledger: PrivacyDefinition) -> FailedPrecondition:
    return FailedPrecondition(
        f"a dataset cap in {cap.value} cannot bound a ledger in {ledger.value}",
        reason="DATASET_CAP_DEFINITION_MISMATCH",
        metadata={"capDefinition": cap.value, "ledgerDefinition": ledger.value},
    )


def check_expected_cost(
    reservation: Reservation, expected: PrivacyLoss, definition: PrivacyDefinition
) -> None:
    """COST_MISMATCH unless `expected` is what was reserved, in the ledger's unit (exactly)."""
    try:
        charge: PrivacyLoss | None = charge_in_unit(expected, definition)
    except InvalidArgument:  # a cost of another kind: it cannot be what was reserved
        charge = None
    if charge != reservation.cost:
        raise FailedPrecondition(
            "the cost of the query to run differs from its reservation; nothing was run",
            reason="COST_MISMATCH",
            metadata={"queryId": reservation.query_id},
        )


__all__ = [
    "cap_mismatch",
    "check_expected_cost",
    "ledger_not_found",
    "require",
    "reservation_not_found",
    "reservation_released",
]
