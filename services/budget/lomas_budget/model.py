"""The value model of the budget ledger: what a ledger, an entry, a reservation, a user's freeze and a
dataset cap are. Immutable values and the rules that need nothing but them.

Every change to a ledger is an entry of one kind, and each kind moves the cached balances of the
ledger row by its amount (`EFFECTS`):

    allocation      allocation += amount            (a grant)
    imported_spend  spent += amount                 (carried over from a Lomas user collection)
    adjustment      allocation += amount            (signed: an administrator raised or lowered it)
    reservation     reserved += cost                (a query may run)
    access          nothing                         (a worker is about to touch the data)
    commit          spent += cost, reserved -= cost
    release         reserved -= cost                (only if no worker touched the data)
    freeze          nothing                         (the user may not start queries)
    unfreeze        nothing

This module depends on `lomas_budget.accounting` and `lomas_common` only: the journal, the store,
verification and the service all build on it, never the other way round.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from lomas_budget.accounting import charge_in_unit, describe, exceeds, loss_metadata, shift
from lomas_common.errors import BudgetExhausted
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss, format_decimal

# The `prev_hash` of a ledger's first entry (and the head of a ledger without entries).
GENESIS_HASH = "0" * 64
# The actor of the entries the sweep writes.
SWEEPER = "sweeper"
# Longer than a task may wait for redelivery: Celery's visibility timeout is 2 x the task time
# limit (300 s) + 60 s = 660 s; a reservation must outlive a task that is redelivered after it.
DEFAULT_RESERVATION_TTL_SECONDS = 900
MAX_RESERVATION_TTL_SECONDS = 7 * 24 * 3600
SWEEP_BATCH = 500
# How long the first answer to a request id is kept for replays (the sweep forgets older ones).
DEFAULT_REQUEST_RETENTION_SECONDS = 7 * 24 * 3600


class EntryKind(enum.StrEnum):
    ALLOCATION = "allocation"
    IMPORTED_SPEND = "imported_spend"
    ADJUSTMENT = "adjustment"
    RESERVATION = "reservation"
    ACCESS = "access"
    COMMIT = "commit"
    RELEASE = "release"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"


# How each entry kind moves the (allocation, spent, reserved) balances, in units of its amount.
EFFECTS: dict[EntryKind, tuple[int, int, int]] = {
    EntryKind.ALLOCATION: (1, 0, 0),
    EntryKind.IMPORTED_SPEND: (0, 1, 0),
    EntryKind.ADJUSTMENT: (1, 0, 0),
    EntryKind.RESERVATION: (0, 0, 1),
    EntryKind.ACCESS: (0, 0, 0),
    EntryKind.COMMIT: (0, 1, -1),
    EntryKind.RELEASE: (0, 0, -1),
    EntryKind.FREEZE: (0, 0, 0),
    EntryKind.UNFREEZE: (0, 0, 0),
}


class ReservationState(enum.StrEnum):
    RESERVED = "reserved"  # budget held; no worker has touched the data
    ACCESSED = "accessed"  # a worker touched the data: the charge can no longer be released
    COMMITTED = "committed"  # charged
    RELEASED = "released"  # returned to the ledger, the query never touched the data


@dataclass(frozen=True, slots=True)
class Amount:
    """The signed components of one entry, in its ledger's unit (only adjustments are negative)."""

    epsilon: Decimal = Decimal(0)
    delta: Decimal = Decimal(0)
    rho: Decimal = Decimal(0)

    @classmethod
    def of(cls, loss: PrivacyLoss) -> Amount:
        return cls(loss.epsilon, loss.delta, loss.rho)

    def texts(self) -> tuple[str, str, str]:
        return format_decimal(self.epsilon), format_decimal(self.delta), format_decimal(self.rho)


ZERO_AMOUNT = Amount()


@dataclass(frozen=True, slots=True)
class LedgerBalance:
    """The state of one ledger, in its own privacy definition, and the head of its entry chain."""

    ledger_id: str
    user: str
    dataset: str
    definition: PrivacyDefinition
    allocation: PrivacyLoss
    spent: PrivacyLoss
    reserved: PrivacyLoss
    created_at: str
    entry_count: int = 0
    head_hash: str = GENESIS_HASH
    frozen: bool = False  # the user may not start queries
    capped: bool = False  # the dataset has a cap, checked with every reservation

    @property
    def remaining(self) -> PrivacyLoss:
        """allocation - spent - reserved, componentwise."""
        return shift(shift(self.allocation, self.spent, -1), self.reserved, -1)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One journal entry. Amounts are the raw stored components (in the ledger's unit)."""

    ledger_id: str
    seq: int
    kind: EntryKind
    epsilon: Decimal
    delta: Decimal
    rho: Decimal
    query_id: str | None
    actor: str
    reason: str
    created_at: str
    prev_hash: str
    hash: str

    def loss(self, definition: PrivacyDefinition) -> PrivacyLoss:
        """The entry's amount as a loss of its ledger's definition (never for adjustments, whose
        components may be negative)."""
        return PrivacyLoss(definition, epsilon=self.epsilon, delta=self.delta, rho=self.rho)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Budget held for one query, keyed by the query id, with an owner and an expiry."""

    query_id: str
    ledger_id: str
    user: str
    dataset: str
    cost: PrivacyLoss
    state: ReservationState
    created_at: str
    updated_at: str
    owner: str = ""
    expires_at: str = ""


@dataclass(frozen=True, slots=True)
class UserState:
    """Whether a user may start queries (Lomas's `may_query`, kept by the ledger)."""

    user: str
    frozen: bool
    actor: str
    reason: str
    updated_at: str
    ledgers: tuple[LedgerBalance, ...] = ()


@dataclass(frozen=True, slots=True)
class DatasetCap:
    """An optional bound on what all users together may spend on one dataset (collusion bound).

    `used` is what the dataset's ledgers spent or hold, each charge converted to the cap's unit.
    """

    dataset: str
    cap: PrivacyLoss | None
    used: PrivacyLoss | None
    actor: str = ""
    reason: str = ""
    updated_at: str = ""

    @property
    def remaining(self) -> PrivacyLoss | None:
        if self.cap is None or self.used is None:
            return None
        return shift(self.cap, self.used, -1)

    def counting(self, charge: PrivacyLoss, sign: int) -> DatasetCap:
        """The cap with `charge` (in a ledger's unit) added to (sign 1) or taken from (sign -1) its
        use; BudgetExhausted (DATASET_CAP_EXHAUSTED) if an addition does not fit."""
        if self.cap is None or self.used is None:
            return self
        converted = charge_in_unit(charge, self.cap.definition)
        if sign > 0:
            remaining = shift(self.cap, self.used, -1)
            if exceeds(converted, remaining):
                raise BudgetExhausted(
                    f"not enough privacy budget left on the dataset: requested "
                    f"{describe(converted)}, remaining {describe(remaining)}",
                    reason="DATASET_CAP_EXHAUSTED",
                    metadata={
                        **loss_metadata("requested", converted),
                        **loss_metadata("remaining", remaining),
                        "dataset": self.dataset,
                    },
                )
        return replace(self, used=shift(self.used, converted, sign))


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep did with expired reservations."""

    released: tuple[str, ...] = ()
    committed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """The first answer to a mutating call with a request id."""

    request_id: str
    method: str
    fingerprint: str
    response: str


def utc_now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    """A timestamp as stored and hashed: ISO-8601 UTC with microseconds (sorts as text)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


__all__ = [
    "DEFAULT_REQUEST_RETENTION_SECONDS",
    "DEFAULT_RESERVATION_TTL_SECONDS",
    "EFFECTS",
    "GENESIS_HASH",
    "MAX_RESERVATION_TTL_SECONDS",
    "SWEEPER",
    "SWEEP_BATCH",
    "ZERO_AMOUNT",
    "Amount",
    "DatasetCap",
    "EntryKind",
    "LedgerBalance",
    "LedgerEntry",
    "Reservation",
    "ReservationState",
    "StoredRequest",
    "SweepReport",
    "UserState",
    "stamp",
    "utc_now",
]
