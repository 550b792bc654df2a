"""The replay codec: the first answer to a request id, stored as JSON text and read back as the same
domain value, and the fingerprint that tells a replay from another request under the same id.

JSON (not pickles, not protobuf): the store keeps domain values, and the service's answers are
domain values until `lomas_budget.convert` turns them into messages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from lomas_budget.model import (
    DatasetCap,
    LedgerBalance,
    Reservation,
    ReservationState,
    SweepReport,
    UserState,
)
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss

T = TypeVar("T")
Json = dict[str, Any]


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How one kind of answer is written to and read from its stored JSON."""

    encode: Callable[[T], Json]
    decode: Callable[[Json], T]

    def dumps(self, value: T) -> str:
        return json.dumps(self.encode(value), separators=(",", ":"))

    def loads(self, text: str) -> T:
        return self.decode(json.loads(text))


def fingerprint(method: str, params: Json) -> str:
    """What a request id is bound to: the method and its (normalised) arguments."""
    text = json.dumps([method, params], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def loss_params(loss: PrivacyLoss | None) -> dict[str, str] | None:
    """A loss as JSON: its definition and its components as decimal text."""
    if loss is None:
        return None
    return {
        "definition": loss.definition.value,
        **{k: str(v) for k, v in loss.components().items()},
    }


def _loss_from_json(data: dict[str, str] | None) -> PrivacyLoss | None:
    if data is None:
        return None
    definition = PrivacyDefinition(data["definition"])
    return PrivacyLoss(
        definition,
        epsilon=Decimal(data.get("epsilon", "0")),
        delta=Decimal(data.get("delta", "0")),
        rho=Decimal(data.get("rho", "0")),
    )


def _required_loss(data: dict[str, str]) -> PrivacyLoss:
    loss = _loss_from_json(data)
    assert loss is not None
    return loss


def _balance_to_json(balance: LedgerBalance) -> Json:
    data = asdict(balance)
    data["definition"] = balance.definition.value
    for name in ("allocation", "spent", "reserved"):
        data[name] = loss_params(getattr(balance, name))
    return data


def _balance_from_json(data: Json) -> LedgerBalance:
    values = dict(data)
    values["definition"] = PrivacyDefinition(data["definition"])
    for name in ("allocation", "spent", "reserved"):
        values[name] = _required_loss(data[name])
    return LedgerBalance(**values)


def _reservation_to_json(reservation: Reservation) -> Json:
    data = asdict(reservation)
    data["cost"] = loss_params(reservation.cost)
    data["state"] = reservation.state.value
    return data


def _reservation_from_json(data: Json) -> Reservation:
    values = dict(data)
    values["cost"] = _required_loss(data["cost"])
    values["state"] = ReservationState(data["state"])
    return Reservation(**values)


def _user_to_json(state: UserState) -> Json:
    data = asdict(state)
    data["ledgers"] = [_balance_to_json(b) for b in state.ledgers]
    return data


def _user_from_json(data: Json) -> UserState:
    values = dict(data)
    values["ledgers"] = tuple(_balance_from_json(b) for b in data["ledgers"])
    return UserState(**values)


def _cap_to_json(cap: DatasetCap) -> Json:
    data = asdict(cap)
    for name in ("cap", "used"):
        data[name] = loss_params(getattr(cap, name))
    return data


def _cap_from_json(data: Json) -> DatasetCap:
    values = dict(data)
    for name in ("cap", "used"):
        values[name] = _loss_from_json(data[name])
    return DatasetCap(**values)


def _sweep_to_json(report: SweepReport) -> Json:
    return {"released": list(report.released), "committed": list(report.committed)}


def _sweep_from_json(data: Json) -> SweepReport:
    return SweepReport(tuple(data["released"]), tuple(data["committed"]))


BALANCE: Codec[LedgerBalance] = Codec(_balance_to_json, _balance_from_json)
RESERVATION: Codec[Reservation] = Codec(_reservation_to_json, _reservation_from_json)
USER: Codec[UserState] = Codec(_user_to_json, _user_from_json)
CAP: Codec[DatasetCap] = Codec(_cap_to_json, _cap_from_json)
SWEEP: Codec[SweepReport] = Codec(_sweep_to_json, _sweep_from_json)

__all__ = ["BALANCE", "CAP", "RESERVATION", "SWEEP", "USER", "Codec", "fingerprint", "loss_params"]
