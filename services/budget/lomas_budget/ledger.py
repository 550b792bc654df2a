"""The budget ledger: the only writer of privacy spend.

One ledger per (user, dataset) grant, kept in the unit of one privacy definition (see
`lomas_budget.accounting`). Every change is an entry in an append-only, hash-chained journal, and
the cached balances on the ledger row change in the same transaction as the entry that changes them:

    allocation      allocation += amount            (a grant)
    imported_spend  spent += amount                 (carried over from a Lomas user collection)
    adjustment      allocation += amount            (signed: an administrator raised or lowered it)
    reservation     reserved += cost                (a query may run)
    access          nothing                         (a worker is about to touch the data)
    commit          spent += cost, reserved -= cost
    release         reserved -= cost                (only if no worker touched the data)
    freeze          nothing                         (the user may not start queries)
    unfreeze        nothing

Balances always derive from the entries; `lomas_budget.verify` recomputes them and checks the chains.

Atomicity: a reservation check and its update happen in one transaction that holds the ledger row
lock (and, when the dataset has a cap, the dataset row lock), so concurrent reservations can never
overspend a ledger or a dataset cap. Lock order, for every writer: the user row, then ledger rows,
then the dataset row (`set_dataset_cap` re-reads under the dataset lock the ledgers it could not
lock first).

Reservations have an owner and an expiry. `sweep` releases an expired reservation that never
reached a worker and commits one whose worker touched the data (no refund after data access).

Idempotency: every mutating call takes an optional `request_id`. The first successful answer is
stored with the change, in the same transaction; a replay with the same id and the same arguments
returns that first answer, with other arguments it raises Conflict (REQUEST_ID_CONFLICT).
Without a request id, reservations stay idempotent on their query id.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from lomas_budget.accounting import (
    CAP_ACCEPTS,
    charge_in_unit,
    definition_mismatch,
    describe,
    exceeds,
    plus,
    shift,
    storable,
)
from lomas_common.errors import (
    AlreadyExists,
    BudgetExhausted,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss, format_decimal

if TYPE_CHECKING:
    from lomas_budget.store import LedgerSession, LedgerStore
    from lomas_budget.verify import VerificationReport

T = TypeVar("T")

GENESIS_HASH = "0" * 64
HASH_VERSION = "lomas-ledger-entry/v1"
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


# --- hashing -----------------------------------------------------------------------------------

_json_string = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) uses


def _json_value(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def chain_prefix(ledger_id: str, user: str, dataset: str, definition: str) -> str:
    """The part of every entry's canonical text that identifies its ledger."""
    return (
        f'["{HASH_VERSION}",{_json_string(ledger_id)},{_json_string(user)},'
        f"{_json_string(dataset)},{_json_string(definition)},"
    )


def chain_hash_after(
    prefix: str,
    seq: int,
    kind: str,
    epsilon: str,
    delta: str,
    rho: str,
    query_id: str | None,
    actor: str,
    reason: str,
    created_at: str,
    prev_hash: str,
) -> str:
    """`chain_hash` with the ledger's part already rendered by `chain_prefix`."""
    canonical = (
        f"{prefix}{int(seq)},{_json_string(kind)},{_json_string(epsilon)},"
        f"{_json_string(delta)},{_json_string(rho)},{_json_value(query_id)},"
        f"{_json_string(actor)},{_json_string(reason)},{_json_string(created_at)},"
        f"{_json_string(prev_hash)}]"
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def chain_hash(
    ledger_id: str,
    user: str,
    dataset: str,
    definition: str,
    seq: int,
    kind: str,
    epsilon: str,
    delta: str,
    rho: str,
    query_id: str | None,
    actor: str,
    reason: str,
    created_at: str,
    prev_hash: str,
) -> str:
    """SHA-256 over the canonical JSON text of one entry (decimals as `format_decimal` text),
    the identity of its ledger and the previous hash: changing any stored field, the ledger's
    owner or definition, or the order of the entries breaks the chain.

    The text is exactly `json.dumps([HASH_VERSION, ledger_id, ..., prev_hash],
    separators=(",", ":"), ensure_ascii=False)`, built directly because verification hashes
    millions of entries.
    """
    return chain_hash_after(
        chain_prefix(ledger_id, user, dataset, definition),
        seq,
        kind,
        epsilon,
        delta,
        rho,
        query_id,
        actor,
        reason,
        created_at,
        prev_hash,
    )


def entry_hash(
    ledger: LedgerBalance,
    *,
    seq: int,
    kind: EntryKind,
    epsilon: Decimal,
    delta: Decimal,
    rho: Decimal,
    query_id: str | None,
    actor: str,
    reason: str,
    created_at: str,
    prev_hash: str,
) -> str:
    """`chain_hash` of one entry of `ledger`, from domain values."""
    return chain_hash(
        ledger.ledger_id,
        ledger.user,
        ledger.dataset,
        ledger.definition.value,
        seq,
        kind.value,
        format_decimal(epsilon),
        format_decimal(delta),
        format_decimal(rho),
        query_id,
        actor,
        reason,
        created_at,
        prev_hash,
    )


# --- helpers -----------------------------------------------------------------------------------


def charge_in_ledger_unit(cost: PrivacyLoss, definition: PrivacyDefinition) -> PrivacyLoss:
    """A cost (rounded up) in a ledger's privacy definition (see `accounting.charge_in_unit`)."""
    return charge_in_unit(cost, definition)


def _require(**values: str | None) -> None:
    for name, value in values.items():
        if not value:
            raise InvalidArgument(
                f"{name} must not be empty",
                reason="FIELD_REQUIRED",
                metadata={"field": name},
            )


def utc_now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    """A timestamp as stored and hashed: ISO-8601 UTC with microseconds (sorts as text)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _fingerprint(method: str, params: dict[str, Any]) -> str:
    text = json.dumps([method, params], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _loss_params(loss: PrivacyLoss | None) -> dict[str, str] | None:
    if loss is None:
        return None
    return {
        "definition": loss.definition.value,
        **{k: str(v) for k, v in loss.components().items()},
    }


def _released(query_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        "the reservation was released",
        reason="RESERVATION_RELEASED",
        metadata={"query_id": query_id},
    )


def _check_expected_cost(
    reservation: Reservation, expected: PrivacyLoss, definition: PrivacyDefinition
) -> None:
    """COST_MISMATCH unless `expected` is what was reserved, in the ledger's unit (exactly)."""
    try:
        charge = charge_in_unit(expected, definition)
    except InvalidArgument:  # a cost of another kind: it cannot be what was reserved
        charge = None
    if charge != reservation.cost:
        raise FailedPrecondition(
            "the cost of the query to run differs from its reservation; nothing was run",
            reason="COST_MISMATCH",
            metadata={"query_id": reservation.query_id},
        )


def _reservation_not_found(query_id: str) -> NotFound:
    return NotFound(
        "no reservation exists for this query id",
        reason="RESERVATION_NOT_FOUND",
        metadata={"query_id": query_id},
    )


def _ledger_not_found() -> NotFound:
    return NotFound("no budget ledger exists for this user and dataset", reason="LEDGER_NOT_FOUND")


def _cap_mismatch(cap: PrivacyDefinition, ledger: PrivacyDefinition) -> FailedPrecondition:
    return FailedPrecondition(
        f"a dataset cap in {cap.value} cannot bound a ledger in {ledger.value}",
        reason="DATASET_CAP_DEFINITION_MISMATCH",
        metadata={"cap_definition": cap.value, "ledger_definition": ledger.value},
    )


# --- (de)serialising first answers ---------------------------------------------------------------


def _loss_to_json(loss: PrivacyLoss | None) -> dict[str, str] | None:
    return _loss_params(loss)


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


def _balance_to_json(balance: LedgerBalance) -> dict[str, Any]:
    data = asdict(balance)
    data["definition"] = balance.definition.value
    for name in ("allocation", "spent", "reserved"):
        data[name] = _loss_to_json(getattr(balance, name))
    return data


def _balance_from_json(data: dict[str, Any]) -> LedgerBalance:
    values = dict(data)
    values["definition"] = PrivacyDefinition(data["definition"])
    for name in ("allocation", "spent", "reserved"):
        values[name] = _loss_from_json(data[name])
    return LedgerBalance(**values)


def _reservation_to_json(reservation: Reservation) -> dict[str, Any]:
    data = asdict(reservation)
    data["cost"] = _loss_to_json(reservation.cost)
    data["state"] = reservation.state.value
    return data


def _reservation_from_json(data: dict[str, Any]) -> Reservation:
    values = dict(data)
    values["cost"] = _loss_from_json(data["cost"])
    values["state"] = ReservationState(data["state"])
    return Reservation(**values)


def _user_to_json(state: UserState) -> dict[str, Any]:
    return {
        "user": state.user,
        "frozen": state.frozen,
        "actor": state.actor,
        "reason": state.reason,
        "updated_at": state.updated_at,
        "ledgers": [_balance_to_json(b) for b in state.ledgers],
    }


def _user_from_json(data: dict[str, Any]) -> UserState:
    return UserState(
        user=data["user"],
        frozen=data["frozen"],
        actor=data["actor"],
        reason=data["reason"],
        updated_at=data["updated_at"],
        ledgers=tuple(_balance_from_json(b) for b in data["ledgers"]),
    )


def _cap_to_json(cap: DatasetCap) -> dict[str, Any]:
    return {
        "dataset": cap.dataset,
        "cap": _loss_to_json(cap.cap),
        "used": _loss_to_json(cap.used),
        "actor": cap.actor,
        "reason": cap.reason,
        "updated_at": cap.updated_at,
    }


def _cap_from_json(data: dict[str, Any]) -> DatasetCap:
    return DatasetCap(
        dataset=data["dataset"],
        cap=_loss_from_json(data["cap"]),
        used=_loss_from_json(data["used"]),
        actor=data["actor"],
        reason=data["reason"],
        updated_at=data["updated_at"],
    )


@dataclass(frozen=True)
class _Codec:
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_BALANCE = _Codec(_balance_to_json, _balance_from_json)
_RESERVATION = _Codec(_reservation_to_json, _reservation_from_json)
_USER = _Codec(_user_to_json, _user_from_json)
_CAP = _Codec(_cap_to_json, _cap_from_json)
_SWEEP = _Codec(
    lambda report: {"released": list(report.released), "committed": list(report.committed)},
    lambda data: SweepReport(tuple(data["released"]), tuple(data["committed"])),
)


@dataclass
class _Pending:
    """Entries and row changes one operation makes, written together at the end."""

    ledger: LedgerBalance
    entries: list[LedgerEntry] = field(default_factory=list)


class BudgetLedger:
    """Privacy-budget ledgers: open, adjust, freeze, cap, reserve, mark accessed, commit, release,
    sweep, read history, verify."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        clock: Callable[[], datetime] = utc_now,
        reservation_ttl_seconds: int = DEFAULT_RESERVATION_TTL_SECONDS,
        request_retention_seconds: int = DEFAULT_REQUEST_RETENTION_SECONDS,
    ) -> None:
        if not 0 < reservation_ttl_seconds <= MAX_RESERVATION_TTL_SECONDS:
            raise ValueError("the reservation TTL must be positive and at most 7 days")
        if request_retention_seconds <= reservation_ttl_seconds:
            raise ValueError("request ids must be kept longer than reservations live")
        self._store = store
        self._clock = clock
        self.reservation_ttl_seconds = reservation_ttl_seconds
        self.request_retention_seconds = request_retention_seconds

    # --- ledgers -------------------------------------------------------------------------------

    def open_ledger(
        self,
        user: str,
        dataset: str,
        allocation: PrivacyLoss,
        already_spent: PrivacyLoss | None,
        actor: str,
        request_id: str | None = None,
    ) -> LedgerBalance:
        """Open the ledger of a grant with `allocation` (rounded down) and optionally a spend
        imported from elsewhere (rounded up, recorded as its own entry).

        Idempotent: the same allocation and import again return the existing balance; anything else
        for an existing ledger raises AlreadyExists (LEDGER_ALREADY_EXISTS). A frozen user's new
        ledger starts frozen. On a capped dataset the ledger's definition must be one the cap can
        bound, and an imported spend must fit the cap.
        """
        _require(user=user, dataset=dataset, actor=actor)
        granted = storable(allocation.as_allocation(), "allocation")
        definition = granted.definition
        imported = (
            charge_in_unit(already_spent, definition)
            if already_spent is not None
            else PrivacyLoss.zero(definition)
        )
        if exceeds(imported, granted):
            raise InvalidArgument(
                "the imported spend exceeds the allocation",
                reason="IMPORTED_SPEND_EXCEEDS_ALLOCATION",
                metadata={"allocation": describe(granted), "already_spent": describe(imported)},
            )
        reason = f"request_id={request_id}" if request_id else ""
        params = {
            "user": user,
            "dataset": dataset,
            "allocation": _loss_params(granted),
            "already_spent": _loss_params(imported),
        }

        def work(session: LedgerSession) -> LedgerBalance:
            user_state = session.lock_user(user, self._now())
            cap = session.lock_dataset(dataset, self._now())
            existing = session.find_ledger(user, dataset)
            if existing is not None:
                if existing.allocation == granted and self._imported(session, existing) == imported:
                    return existing
                raise AlreadyExists(
                    "a ledger with a different allocation exists for this user and dataset",
                    reason="LEDGER_ALREADY_EXISTS",
                    metadata={"allocation": describe(existing.allocation)},
                )
            if cap.cap is not None and definition not in CAP_ACCEPTS[cap.cap.definition]:
                raise _cap_mismatch(cap.cap.definition, definition)
            now = self._now()
            zero = PrivacyLoss.zero(definition)
            balance = LedgerBalance(
                ledger_id=session.new_ledger_id(),
                user=user,
                dataset=dataset,
                definition=definition,
                allocation=zero,
                spent=zero,
                reserved=zero,
                created_at=now,
                capped=cap.cap is not None,
            )
            session.insert_ledger(balance, request_id=request_id)
            pending = _Pending(balance)
            self._add(pending, EntryKind.ALLOCATION, Amount.of(granted), None, actor, reason, now)
            if imported != zero:
                if cap.cap is not None:
                    cap = self._count_against_cap(cap, imported, 1)
                self._add(
                    pending, EntryKind.IMPORTED_SPEND, Amount.of(imported), None, actor, reason, now
                )
            if user_state.frozen:
                self._add(
                    pending,
                    EntryKind.FREEZE,
                    ZERO_AMOUNT,
                    None,
                    user_state.actor,
                    user_state.reason,
                    now,
                )
            counted = cap if cap.cap is not None and imported != zero else None
            session.write(pending.ledger, pending.entries, dataset=counted)
            return pending.ledger

        return self._once(request_id, "open_ledger", params, work, _BALANCE)

    def adjust_allocation(
        self,
        user: str,
        dataset: str,
        allocation: PrivacyLoss,
        actor: str,
        reason: str = "",
        request_id: str | None = None,
    ) -> LedgerBalance:
        """Set a ledger's allocation to `allocation` (rounded down), raising or lowering it.

        Recorded as one ADJUSTMENT entry holding the signed difference. Never below what is spent
        or held (FailedPrecondition ALLOCATION_BELOW_SPENT); the definition cannot change
        (InvalidArgument PRIVACY_DEFINITION_MISMATCH). The same allocation again changes nothing.
        """
        _require(user=user, dataset=dataset, actor=actor)
        target = storable(allocation.as_allocation(), "allocation")
        params = {"user": user, "dataset": dataset, "allocation": _loss_params(target)}

        def work(session: LedgerSession) -> LedgerBalance:
            balance = session.find_ledger(user, dataset, for_update=True)
            if balance is None:
                raise _ledger_not_found()
            if target.definition is not balance.definition:
                raise definition_mismatch(target.definition, balance.definition)
            used = shift(balance.spent, balance.reserved, 1)
            if exceeds(used, target):
                raise FailedPrecondition(
                    "an allocation cannot be lowered below what is spent or held",
                    reason="ALLOCATION_BELOW_SPENT",
                    metadata={
                        "allocation": describe(target),
                        "spent": describe(balance.spent),
                        "reserved": describe(balance.reserved),
                    },
                )
            if target == balance.allocation:
                return balance
            difference = Amount(
                plus(target.epsilon, balance.allocation.epsilon, -1),
                plus(target.delta, balance.allocation.delta, -1),
                plus(target.rho, balance.allocation.rho, -1),
            )
            pending = _Pending(balance)
            self._add(pending, EntryKind.ADJUSTMENT, difference, None, actor, reason, self._now())
            session.write(pending.ledger, pending.entries)
            return pending.ledger

        return self._once(request_id, "adjust_allocation", params, work, _BALANCE)

    def get_balance(self, user: str, dataset: str) -> LedgerBalance:
        """The balance of one ledger, or NotFound (LEDGER_NOT_FOUND)."""

        def work(session: LedgerSession) -> LedgerBalance:
            balance = session.find_ledger(user, dataset)
            if balance is None:
                raise _ledger_not_found()
            return balance

        return self._store.run(work, readonly=True)

    def list_balances(self, user: str) -> list[LedgerBalance]:
        """Every ledger of one user, by dataset."""
        return self._store.run(lambda session: session.user_ledgers(user), readonly=True)

    def list_entries(
        self, user: str, dataset: str, *, after_seq: int = 0, limit: int = 100
    ) -> tuple[LedgerBalance, list[LedgerEntry], bool]:
        """A ledger's history: its entries after `after_seq`, oldest first, at most `limit`, and
        whether more follow."""

        def work(session: LedgerSession) -> tuple[LedgerBalance, list[LedgerEntry], bool]:
            balance = session.find_ledger(user, dataset)
            if balance is None:
                raise _ledger_not_found()
            entries = session.entries(balance.ledger_id, after_seq=after_seq, limit=limit + 1)
            return balance, entries[:limit], len(entries) > limit

        return self._store.run(work, readonly=True)

    # --- users ---------------------------------------------------------------------------------

    def freeze_user(
        self, user: str, actor: str, reason: str = "", request_id: str | None = None
    ) -> UserState:
        """Stop a user from starting queries (in flight ones may still commit or release).

        Every ledger of the user gets a FREEZE entry; ledgers opened later start frozen.
        Freezing a frozen user changes nothing.
        """
        return self._set_frozen(user, True, actor, reason, request_id)

    def unfreeze_user(
        self, user: str, actor: str, reason: str = "", request_id: str | None = None
    ) -> UserState:
        """Let a frozen user start queries again (an UNFREEZE entry in each of the user's ledgers)."""
        return self._set_frozen(user, False, actor, reason, request_id)

    def get_user(self, user: str) -> UserState:
        """Whether a user is frozen (users the ledger never saw are not)."""

        def work(session: LedgerSession) -> UserState:
            return replace(session.get_user(user), ledgers=tuple(session.user_ledgers(user)))

        return self._store.run(work, readonly=True)

    def _set_frozen(
        self, user: str, frozen: bool, actor: str, reason: str, request_id: str | None
    ) -> UserState:
        _require(user=user, actor=actor)
        method = "freeze_user" if frozen else "unfreeze_user"

        def work(session: LedgerSession) -> UserState:
            state = session.lock_user(user, self._now())
            ledgers = session.user_ledgers(user, for_update=True)
            if state.frozen == frozen:
                return replace(state, ledgers=tuple(ledgers))
            now = self._now()
            state = UserState(user, frozen, actor, reason, now)
            session.update_user(state)
            kind = EntryKind.FREEZE if frozen else EntryKind.UNFREEZE
            updated = []
            for balance in ledgers:
                pending = _Pending(balance)
                self._add(pending, kind, ZERO_AMOUNT, None, actor, reason, now)
                session.write(pending.ledger, pending.entries)
                updated.append(pending.ledger)
            return replace(state, ledgers=tuple(updated))

        return self._once(request_id, method, {"user": user}, work, _USER)

    # --- dataset caps --------------------------------------------------------------------------

    def set_dataset_cap(
        self,
        dataset: str,
        cap: PrivacyLoss | None,
        actor: str,
        reason: str = "",
        request_id: str | None = None,
    ) -> DatasetCap:
        """Bound what all users together may spend on `dataset` (rounded down), or remove the
        bound (`cap=None`).

        Every ledger of the dataset must be one the cap can bound (FailedPrecondition
        DATASET_CAP_DEFINITION_MISMATCH), and what they already spent or hold must fit
        (FailedPrecondition DATASET_CAP_BELOW_USED).
        """
        _require(dataset=dataset, actor=actor)
        bound = storable(cap.as_allocation(), "cap") if cap is not None else None
        params = {"dataset": dataset, "cap": _loss_params(bound)}

        def work(session: LedgerSession) -> DatasetCap:
            session.dataset_ledgers(dataset, for_update=True)  # ledger locks before dataset lock
            session.lock_dataset(dataset, self._now())
            ledgers = session.dataset_ledgers(dataset, for_update=True)  # now complete
            now = self._now()
            if bound is None:
                updated = DatasetCap(dataset, None, None, actor, reason, now)
                session.update_dataset(updated)
                session.set_capped([b.ledger_id for b in ledgers], False)
                return updated
            for balance in ledgers:
                if balance.definition not in CAP_ACCEPTS[bound.definition]:
                    raise _cap_mismatch(bound.definition, balance.definition)
            used = PrivacyLoss.zero(bound.definition)
            for charge in session.dataset_charges(dataset):
                used = shift(used, charge_in_unit(charge, bound.definition), 1)
            if exceeds(used, bound):
                raise FailedPrecondition(
                    "the cap is below what the dataset's ledgers already spent or hold",
                    reason="DATASET_CAP_BELOW_USED",
                    metadata={"cap": describe(bound), "used": describe(used)},
                )
            updated = DatasetCap(dataset, bound, used, actor, reason, now)
            session.update_dataset(updated)
            session.set_capped([b.ledger_id for b in ledgers], True)
            return updated

        return self._once(request_id, "set_dataset_cap", params, work, _CAP)

    def get_dataset_cap(self, dataset: str) -> DatasetCap:
        """A dataset's cap (`cap` is None when it has none)."""
        return self._store.run(lambda session: session.get_dataset(dataset), readonly=True)

    # --- reservations --------------------------------------------------------------------------

    def reserve(
        self,
        query_id: str,
        user: str,
        dataset: str,
        cost: PrivacyLoss,
        actor: str,
        *,
        owner: str = "",
        ttl_seconds: int | None = None,
        request_id: str | None = None,
    ) -> Reservation:
        """Hold `cost` (rounded up, in the ledger's unit) for query `query_id`, atomically with the
        ledger's balance, the user's freeze and the dataset's cap.

        The reservation belongs to `owner` (default: `actor`) and expires after `ttl_seconds`
        (default: the ledger's TTL), when `sweep` settles it.
        Idempotent on `query_id`: the same reservation again returns it as it is now; the same id
        for another ledger or cost raises Conflict (QUERY_ID_CONFLICT).
        Raises BudgetExhausted (PRIVACY_BUDGET_EXHAUSTED, or DATASET_CAP_EXHAUSTED), with
        `requested` and `remaining`, if any component does not fit; PermissionDenied
        (USER_MAY_NOT_QUERY) if the user is frozen.
        """
        _require(query_id=query_id, user=user, dataset=dataset, actor=actor)
        ttl = self.reservation_ttl_seconds if ttl_seconds is None else ttl_seconds
        if not 0 < ttl <= MAX_RESERVATION_TTL_SECONDS:
            raise InvalidArgument(
                "ttl_seconds must be positive and at most 7 days",
                reason="TTL_INVALID",
                metadata={"max_seconds": str(MAX_RESERVATION_TTL_SECONDS)},
            )
        params = {
            "query_id": query_id,
            "user": user,
            "dataset": dataset,
            "cost": _loss_params(cost),
            "owner": owner or actor,
            "ttl": ttl,
        }

        def work(session: LedgerSession) -> Reservation:
            balance, existing = session.lock_for_reservation(user, dataset, query_id)
            if balance is None:
                raise _ledger_not_found()
            charge = charge_in_unit(cost, balance.definition)
            if existing is not None:
                if existing.ledger_id == balance.ledger_id and existing.cost == charge:
                    return existing
                raise Conflict(
                    "this query id was already used for another reservation",
                    reason="QUERY_ID_CONFLICT",
                    metadata={"query_id": query_id},
                )
            if balance.frozen:
                raise PermissionDenied(
                    "querying is suspended for this user", reason="USER_MAY_NOT_QUERY"
                )
            remaining = balance.remaining
            if exceeds(charge, remaining):
                raise BudgetExhausted(
                    f"not enough privacy budget: requested {describe(charge)}, "
                    f"remaining {describe(remaining)}",
                    metadata={"requested": describe(charge), "remaining": describe(remaining)},
                )
            cap = None
            if balance.capped:
                cap = self._count_against_cap(session.lock_dataset(dataset, None), charge, 1)
            moment = self._clock()
            now = stamp(moment)
            reservation = Reservation(
                query_id=query_id,
                ledger_id=balance.ledger_id,
                user=user,
                dataset=dataset,
                cost=charge,
                state=ReservationState.RESERVED,
                created_at=now,
                updated_at=now,
                owner=owner or actor,
                expires_at=stamp(moment + timedelta(seconds=ttl)),
            )
            pending = _Pending(balance)
            self._add(pending, EntryKind.RESERVATION, Amount.of(charge), query_id, actor, "", now)
            session.write(pending.ledger, pending.entries, new_reservation=reservation, dataset=cap)
            return reservation

        return self._once(request_id, "reserve", params, work, _RESERVATION)

    def mark_accessed(
        self,
        query_id: str,
        *,
        actor: str = "worker",
        request_id: str | None = None,
        expected_cost: PrivacyLoss | None = None,
    ) -> Reservation:
        """Record that a worker is about to touch the data (RESERVED -> ACCESSED; idempotent).

        From now on the reservation can only be committed. FailedPrecondition (RESERVATION_RELEASED)
        if it was released; NotFound (RESERVATION_NOT_FOUND) if unknown.

        `expected_cost` is the worker's own cost of what it is about to run. When given, it must
        equal the reserved cost once expressed in the ledger's unit (as `reserve` expressed it);
        otherwise FailedPrecondition (COST_MISMATCH) and nothing is written, in any state, so the
        worker runs nothing whose cost differs from the charge.
        """

        def work(session: LedgerSession) -> Reservation:
            balance, reservation = self._locked_reservation(session, query_id)
            if reservation.state is ReservationState.RELEASED:
                raise _released(query_id)
            if expected_cost is not None:
                _check_expected_cost(reservation, expected_cost, balance.definition)
            if reservation.state is not ReservationState.RESERVED:
                return reservation
            return self._transition(
                session,
                balance,
                reservation,
                ReservationState.ACCESSED,
                EntryKind.ACCESS,
                actor or "worker",
                "",
            )

        params: dict[str, Any] = {"query_id": query_id}
        if expected_cost is not None:
            params["expected_cost"] = _loss_params(expected_cost)
        return self._once(request_id, "mark_accessed", params, work, _RESERVATION)

    def commit(
        self,
        query_id: str,
        *,
        actor: str = "worker",
        reason: str = "",
        request_id: str | None = None,
    ) -> Reservation:
        """Charge a reservation (RESERVED or ACCESSED -> COMMITTED): spent += cost and
        reserved -= cost.

        Idempotent: committing again returns the committed reservation and charges nothing more.
        """

        def work(session: LedgerSession) -> Reservation:
            balance, reservation = self._locked_reservation(session, query_id)
            if reservation.state is ReservationState.RELEASED:
                raise _released(query_id)
            if reservation.state is ReservationState.COMMITTED:
                return reservation
            return self._transition(
                session,
                balance,
                reservation,
                ReservationState.COMMITTED,
                EntryKind.COMMIT,
                actor or "worker",
                reason,
            )

        params = {"query_id": query_id}
        return self._once(request_id, "commit", params, work, _RESERVATION)

    def release(
        self,
        query_id: str,
        *,
        actor: str = "worker",
        reason: str = "",
        request_id: str | None = None,
    ) -> Reservation:
        """Return a reservation that never touched the data (RESERVED -> RELEASED; idempotent).

        FailedPrecondition (DATA_ACCESSED) once a worker touched the data or the charge is
        committed: there is no refund after data access.
        """

        def work(session: LedgerSession) -> Reservation:
            balance, reservation = self._locked_reservation(session, query_id)
            if reservation.state is ReservationState.RELEASED:
                return reservation
            if reservation.state is not ReservationState.RESERVED:
                raise FailedPrecondition(
                    "the query touched the data: its charge cannot be released",
                    reason="DATA_ACCESSED",
                    metadata={"query_id": query_id, "state": reservation.state.value},
                )
            return self._transition(
                session,
                balance,
                reservation,
                ReservationState.RELEASED,
                EntryKind.RELEASE,
                actor or "worker",
                reason,
            )

        params = {"query_id": query_id}
        return self._once(request_id, "release", params, work, _RESERVATION)

    def get_reservation(self, query_id: str) -> Reservation:
        """One reservation, or NotFound (RESERVATION_NOT_FOUND)."""

        def work(session: LedgerSession) -> Reservation:
            reservation = session.find_reservation(query_id)
            if reservation is None:
                raise _reservation_not_found(query_id)
            return reservation

        return self._store.run(work, readonly=True)

    def sweep(self, *, batch: int = SWEEP_BATCH, request_id: str | None = None) -> SweepReport:
        """Settle every reservation that expired by now: release one that never reached a worker,
        commit one whose worker touched the data. Safe to run anywhere, any number of times, also
        concurrently (each reservation is settled in its own transaction, under its row locks).

        Also forgets the first answers of request ids older than the retention period (a replay
        after that runs again, as a new request)."""
        if request_id:
            stored = self._store.run(
                lambda session: session.find_request(request_id), readonly=True
            )
            if stored is not None:
                return self._once(request_id, "sweep", {}, lambda session: SweepReport(), _SWEEP)
        moment = self._clock()
        now = stamp(moment)
        released: list[str] = []
        committed: list[str] = []
        seen: set[str] = set()
        while True:
            expired = [
                query_id
                for query_id in self._store.run(
                    lambda session: session.expired_reservations(now, batch), readonly=True
                )
                if query_id not in seen
            ]
            if not expired:
                break
            for query_id in expired:
                seen.add(query_id)
                outcome = self._store.run(partial(self._settle, query_id=query_id, now=now))
                if outcome is ReservationState.RELEASED:
                    released.append(query_id)
                elif outcome is ReservationState.COMMITTED:
                    committed.append(query_id)
        forget_before = stamp(moment - timedelta(seconds=self.request_retention_seconds))
        self._store.run(lambda session: session.forget_requests(forget_before))
        report = SweepReport(tuple(released), tuple(committed))
        if not request_id:
            return report
        return self._once(request_id, "sweep", {}, lambda session: report, _SWEEP)

    def _settle(self, session: LedgerSession, query_id: str, now: str) -> ReservationState | None:
        found = session.lock_reservation(query_id)
        if found is None:
            return None
        balance, reservation = found
        if reservation.expires_at > now:
            return None
        if reservation.state is ReservationState.RESERVED:
            self._transition(
                session,
                balance,
                reservation,
                ReservationState.RELEASED,
                EntryKind.RELEASE,
                SWEEPER,
                "expired before reaching a worker",
            )
            return ReservationState.RELEASED
        if reservation.state is ReservationState.ACCESSED:
            self._transition(
                session,
                balance,
                reservation,
                ReservationState.COMMITTED,
                EntryKind.COMMIT,
                SWEEPER,
                "expired after data access: the charge is kept",
            )
            return ReservationState.COMMITTED
        return None

    # --- verification --------------------------------------------------------------------------

    def verify(self, ledger_id: str | None = None) -> VerificationReport:
        """Recompute every balance (or one ledger's) from its entries, check every hash chain,
        reservation, freeze and dataset cap, in one snapshot. See `lomas_budget.verify`."""
        from lomas_budget.verify import verify_snapshot

        return self._store.run(lambda session: verify_snapshot(session, ledger_id), readonly=True)

    def verify_ledger(self, ledger_id: str) -> list[str]:
        """The problems of one ledger; an empty list means it is consistent."""
        return list(self.verify(ledger_id).problems)

    def verify_all(self) -> list[str]:
        """The problems of every ledger; an empty list means they are all consistent."""
        return list(self.verify().problems)

    def count_ledgers(self) -> int:
        """How many ledgers exist."""
        return self._store.run(lambda session: session.count_ledgers(), readonly=True)

    # --- internals -----------------------------------------------------------------------------

    def _now(self) -> str:
        return stamp(self._clock())

    def _once(
        self,
        request_id: str | None,
        method: str,
        params: dict[str, Any],
        work: Callable[[LedgerSession], T],
        codec: _Codec,
    ) -> T:
        """Run `work` in one transaction; with a request id, store its first answer there too and
        return that answer to replays (AIP-155)."""
        if not request_id:
            return self._store.run(work, pipelined=True)
        fingerprint = _fingerprint(method, params)

        def once(session: LedgerSession) -> T:
            stored = session.find_request(request_id)
            if stored is not None:
                if stored.method != method or stored.fingerprint != fingerprint:
                    raise Conflict(
                        "this request id was already used for another request",
                        reason="REQUEST_ID_CONFLICT",
                        metadata={"request_id": request_id},
                    )
                result: T = codec.decode(json.loads(stored.response))
                return result
            result = work(session)
            response = json.dumps(codec.encode(result), separators=(",", ":"))
            session.insert_request(
                StoredRequest(request_id, method, fingerprint, response), self._now()
            )
            return result

        return self._store.run(once, pipelined=True)

    @staticmethod
    def _imported(session: LedgerSession, balance: LedgerBalance) -> PrivacyLoss:
        total = PrivacyLoss.zero(balance.definition)
        for entry in session.entries(balance.ledger_id, kind=EntryKind.IMPORTED_SPEND):
            total = shift(total, _loss(entry, balance.definition), 1)
        return total

    @staticmethod
    def _count_against_cap(cap: DatasetCap, charge: PrivacyLoss, sign: int) -> DatasetCap:
        """The cap with `charge` (in a ledger's unit) added to (sign 1) or taken from its use;
        BudgetExhausted (DATASET_CAP_EXHAUSTED) if an addition does not fit."""
        if cap.cap is None or cap.used is None:
            return cap
        converted = charge_in_unit(charge, cap.cap.definition)
        if sign > 0:
            remaining = shift(cap.cap, cap.used, -1)
            if exceeds(converted, remaining):
                raise BudgetExhausted(
                    f"not enough privacy budget left on the dataset: requested "
                    f"{describe(converted)}, remaining {describe(remaining)}",
                    reason="DATASET_CAP_EXHAUSTED",
                    metadata={
                        "requested": describe(converted),
                        "remaining": describe(remaining),
                        "dataset": cap.dataset,
                    },
                )
        return replace(cap, used=shift(cap.used, converted, sign))

    @staticmethod
    def _locked_reservation(
        session: LedgerSession, query_id: str
    ) -> tuple[LedgerBalance, Reservation]:
        """The reservation and its ledger, both rows locked by this transaction."""
        _require(query_id=query_id)
        found = session.lock_reservation(query_id)
        if found is None:
            raise _reservation_not_found(query_id)
        return found

    def _transition(
        self,
        session: LedgerSession,
        balance: LedgerBalance,
        reservation: Reservation,
        state: ReservationState,
        kind: EntryKind,
        actor: str,
        reason: str,
    ) -> Reservation:
        now = self._now()
        updated = replace(reservation, state=state, updated_at=now)
        amount = ZERO_AMOUNT if kind is EntryKind.ACCESS else Amount.of(reservation.cost)
        pending = _Pending(balance)
        self._add(pending, kind, amount, reservation.query_id, actor, reason, now)
        cap = None
        if kind is EntryKind.RELEASE and balance.capped:
            cap = self._count_against_cap(
                session.lock_dataset(balance.dataset, None), reservation.cost, -1
            )
        session.write(pending.ledger, pending.entries, reservation_update=updated, dataset=cap)
        return updated

    @staticmethod
    def _add(
        pending: _Pending,
        kind: EntryKind,
        amount: Amount,
        query_id: str | None,
        actor: str,
        reason: str,
        now: str,
    ) -> None:
        """Append one entry to `pending`, moving its cached balances and chain head."""
        balance = pending.ledger
        seq = balance.entry_count + 1
        epsilon, delta, rho = amount.texts()
        digest = chain_hash(
            balance.ledger_id,
            balance.user,
            balance.dataset,
            balance.definition.value,
            seq,
            kind.value,
            epsilon,
            delta,
            rho,
            query_id,
            actor,
            reason,
            now,
            balance.head_hash,
        )
        pending.entries.append(
            LedgerEntry(
                ledger_id=balance.ledger_id,
                seq=seq,
                kind=kind,
                epsilon=amount.epsilon,
                delta=amount.delta,
                rho=amount.rho,
                query_id=query_id,
                actor=actor,
                reason=reason,
                created_at=now,
                prev_hash=balance.head_hash,
                hash=digest,
            )
        )
        on_allocation, on_spent, on_reserved = EFFECTS[kind]
        frozen = balance.frozen
        if kind is EntryKind.FREEZE:
            frozen = True
        elif kind is EntryKind.UNFREEZE:
            frozen = False
        pending.ledger = replace(
            balance,
            allocation=_moved(balance.allocation, amount, on_allocation),
            spent=_moved(balance.spent, amount, on_spent),
            reserved=_moved(balance.reserved, amount, on_reserved),
            entry_count=seq,
            head_hash=digest,
            frozen=frozen,
        )


def _moved(base: PrivacyLoss, amount: Amount, sign: int) -> PrivacyLoss:
    if sign == 0:
        return base
    return PrivacyLoss(
        base.definition,
        epsilon=plus(base.epsilon, amount.epsilon, sign),
        delta=plus(base.delta, amount.delta, sign),
        rho=plus(base.rho, amount.rho, sign),
    )


def _loss(entry: LedgerEntry, definition: PrivacyDefinition) -> PrivacyLoss:
    return PrivacyLoss(definition, epsilon=entry.epsilon, delta=entry.delta, rho=entry.rho)


__all__ = [
    "DEFAULT_REQUEST_RETENTION_SECONDS",
    "DEFAULT_RESERVATION_TTL_SECONDS",
    "EFFECTS",
    "GENESIS_HASH",
    "Amount",
    "BudgetLedger",
    "DatasetCap",
    "EntryKind",
    "LedgerBalance",
    "LedgerEntry",
    "Reservation",
    "ReservationState",
    "StoredRequest",
    "SweepReport",
    "UserState",
    "chain_hash",
    "chain_hash_after",
    "chain_prefix",
    "charge_in_ledger_unit",
    "describe",
    "entry_hash",
    "stamp",
    "utc_now",
]
