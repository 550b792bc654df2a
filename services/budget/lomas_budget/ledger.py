"""The budget ledger: the only writer of privacy spend.

One ledger per (user, dataset) grant, kept in the unit of one privacy definition. Every change
is an entry in an append-only, hash-chained journal, and the cached balances on the ledger row
change in the same transaction as the entry that changes them:

    allocation      allocation += amount
    imported_spend  spent += amount             (carried over from a Lomas user collection)
    reservation     reserved += cost            (a query may run)
    access          nothing                     (a worker is about to touch the data)
    commit          spent += cost, reserved -= cost
    release         reserved -= cost            (only if no worker touched the data)

A reservation check and its update happen in one transaction that holds the ledger row lock, so
concurrent reservations can never overspend a ledger. Costs round up, allocations round down; every
amount is an exact `Decimal`.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import TYPE_CHECKING

from lomas_common.errors import (
    AlreadyExists,
    BudgetExhausted,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from lomas_common.privacy import (
    PrivacyDefinition,
    PrivacyLoss,
    format_decimal,
    round_cost,
)

if TYPE_CHECKING:
    from lomas_budget.store import LedgerSession, LedgerStore

GENESIS_HASH = "0" * 64
_HASH_VERSION = "lomas-ledger-entry/v1"
# Storable bound: NUMERIC(38, 18) holds values below 1e20.
_MAX_STORABLE = Decimal("1e20")
# All ledger arithmetic goes through this context, never the default one (28 digits, which would
# round a 1e10 allocation with 18 decimals). Exact for sums of storable values (< 1e20, 18 decimals)
# and for eps**2 / 2 (at most 77 significant digits).
_EXACT = Context(prec=100)
_COMPONENTS = ("epsilon", "delta", "rho")


class EntryKind(enum.StrEnum):
    ALLOCATION = "allocation"
    IMPORTED_SPEND = "imported_spend"
    RESERVATION = "reservation"
    ACCESS = "access"
    COMMIT = "commit"
    RELEASE = "release"


# How each entry kind moves the (allocation, spent, reserved) balances, in units of its amount.
_EFFECTS: dict[EntryKind, tuple[int, int, int]] = {
    EntryKind.ALLOCATION: (1, 0, 0),
    EntryKind.IMPORTED_SPEND: (0, 1, 0),
    EntryKind.RESERVATION: (0, 0, 1),
    EntryKind.ACCESS: (0, 0, 0),
    EntryKind.COMMIT: (0, 1, -1),
    EntryKind.RELEASE: (0, 0, -1),
}


class ReservationState(enum.StrEnum):
    RESERVED = "reserved"  # budget held; no worker has touched the data
    ACCESSED = "accessed"  # a worker touched the data: the charge can no longer be released
    COMMITTED = "committed"  # charged
    RELEASED = "released"  # returned to the ledger, the query never touched the data


@dataclass(frozen=True, slots=True)
class LedgerBalance:
    """The state of one ledger, in its own privacy definition."""

    ledger_id: str
    user: str
    dataset: str
    definition: PrivacyDefinition
    allocation: PrivacyLoss
    spent: PrivacyLoss
    reserved: PrivacyLoss
    created_at: str

    @property
    def remaining(self) -> PrivacyLoss:
        """allocation - spent - reserved, componentwise."""
        return _shift(_shift(self.allocation, self.spent, -1), self.reserved, -1)


@dataclass(frozen=True, slots=True)
class StoredLedger:
    """A ledger row: the balance plus the head of its entry chain."""

    balance: LedgerBalance
    entry_count: int
    head_hash: str


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One journal entry. Amounts are the raw stored components (in the ledger's unit), so that a
    tampered row can still be read and reported by `verify_ledger`."""

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
    """Budget held for one query, keyed by the query id."""

    query_id: str
    ledger_id: str
    user: str
    dataset: str
    cost: PrivacyLoss
    state: ReservationState
    created_at: str
    updated_at: str


def describe(loss: PrivacyLoss) -> str:
    """'epsilon=1, delta=0.00001': the components of a loss, for messages and error metadata."""
    return ", ".join(f"{name}={format_decimal(value)}" for name, value in loss.components().items())


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
    """SHA-256 over a canonical JSON text of one entry, the identity of its ledger and the
    previous hash: changing any stored field, the ledger's owner or definition, or the order of
    the entries breaks the chain."""
    canonical = json.dumps(
        [
            _HASH_VERSION,
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
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def charge_in_ledger_unit(cost: PrivacyLoss, definition: PrivacyDefinition) -> PrivacyLoss:
    """A cost (rounded up) expressed in a ledger's privacy definition, or InvalidArgument.

    * approx-DP ledger: (eps, delta) as is; a pure-DP cost is (eps, 0); no zCDP costs.
    * pure-DP ledger: eps; an approx-DP cost only if its delta is 0; no zCDP costs.
    * zCDP ledger: rho as is; a pure-DP (or delta = 0) cost of eps is rho = eps**2 / 2 (rounded up).
    """
    cost = cost.as_cost()
    approx, pure, zcdp = (
        PrivacyDefinition.APPROX_DP,
        PrivacyDefinition.PURE_DP,
        PrivacyDefinition.RHO_ZCDP,
    )
    if definition is approx and cost.definition is not zcdp:
        return PrivacyLoss.approx_dp(cost.epsilon, cost.delta)
    if definition is pure and cost.definition is not zcdp and cost.delta == 0:
        return PrivacyLoss.pure_dp(cost.epsilon)
    if definition is zcdp and cost.definition is zcdp:
        return cost
    if definition is zcdp and cost.delta == 0:
        rho = round_cost(_EXACT.divide(_EXACT.multiply(cost.epsilon, cost.epsilon), 2))
        return _storable(PrivacyLoss.rho_zcdp(rho), "cost")
    raise InvalidArgument(
        f"a {cost.definition.value} cost cannot be charged to a {definition.value} ledger",
        reason="PRIVACY_DEFINITION_MISMATCH",
        metadata={
            "ledger_definition": definition.value,
            "cost_definition": cost.definition.value,
        },
    )


def _shift(base: PrivacyLoss, amount: PrivacyLoss, sign: int) -> PrivacyLoss:
    """base + sign * amount, componentwise (same definition; raises if a component is < 0)."""
    if base.definition is not amount.definition:
        raise ValueError("privacy losses of different definitions")
    return PrivacyLoss(
        base.definition,
        epsilon=_plus(base.epsilon, amount.epsilon, sign),
        delta=_plus(base.delta, amount.delta, sign),
        rho=_plus(base.rho, amount.rho, sign),
    )


def _plus(base: Decimal, amount: Decimal, sign: int = 1) -> Decimal:
    """base + sign * amount, exactly."""
    return _EXACT.add(base, _EXACT.multiply(sign, amount))


def _exceeds(amount: PrivacyLoss, limit: PrivacyLoss) -> bool:
    return any(
        amount_value > limit.components()[name]
        for name, amount_value in amount.components().items()
    )


def _storable(loss: PrivacyLoss, name: str) -> PrivacyLoss:
    if any(value >= _MAX_STORABLE for value in (loss.epsilon, loss.delta, loss.rho)):
        raise InvalidArgument(f"{name} is too large", reason="PRIVACY_VALUE_OUT_OF_RANGE")
    return loss


def _require(**values: str | None) -> None:
    for name, value in values.items():
        if not value:
            raise InvalidArgument(
                f"{name} must not be empty",
                reason="FIELD_REQUIRED",
                metadata={"field": name},
            )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class BudgetLedger:
    """Privacy-budget ledgers: open, reserve, mark accessed, commit, release, verify."""

    def __init__(self, store: LedgerStore, *, clock: Callable[[], str] = _now) -> None:
        self._store = store
        self._clock = clock

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
        for an existing ledger raises AlreadyExists.
        """
        _require(user=user, dataset=dataset, actor=actor)
        granted = _storable(allocation.as_allocation(), "allocation")
        definition = granted.definition
        imported = (
            charge_in_ledger_unit(already_spent, definition)
            if already_spent is not None
            else PrivacyLoss.zero(definition)
        )
        if _exceeds(imported, granted):
            raise InvalidArgument(
                "the imported spend exceeds the allocation",
                reason="IMPORTED_SPEND_EXCEEDS_ALLOCATION",
                metadata={
                    "allocation": describe(granted),
                    "already_spent": describe(imported),
                },
            )
        reason = f"request_id={request_id}" if request_id else ""

        def work(session: LedgerSession) -> LedgerBalance:
            existing = session.find_ledger(user, dataset)
            if existing is not None:
                balance = existing.balance
                if balance.allocation == granted and self._imported(session, balance) == imported:
                    return balance
                raise AlreadyExists(
                    "a ledger with a different allocation exists for this user and dataset",
                    reason="LEDGER_ALREADY_EXISTS",
                    metadata={"allocation": describe(balance.allocation)},
                )
            now = self._clock()
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
            )
            stored = StoredLedger(balance, entry_count=0, head_hash=GENESIS_HASH)
            session.insert_ledger(stored, request_id=request_id)
            stored = self._append(
                session, stored, EntryKind.ALLOCATION, granted, None, actor, reason, now
            )
            if imported != zero:
                stored = self._append(
                    session,
                    stored,
                    EntryKind.IMPORTED_SPEND,
                    imported,
                    None,
                    actor,
                    reason,
                    now,
                )
            return stored.balance

        return self._store.run(work)

    def get_balance(self, user: str, dataset: str) -> LedgerBalance:
        """The balance of one ledger, or NotFound (LEDGER_NOT_FOUND)."""

        def work(session: LedgerSession) -> LedgerBalance:
            return self._ledger(session, user, dataset, lock=False).balance

        return self._store.run(work, readonly=True)

    def list_balances(self, user: str) -> list[LedgerBalance]:
        """Every ledger of one user, by dataset."""

        def work(session: LedgerSession) -> list[LedgerBalance]:
            return [stored.balance for stored in session.list_ledgers(user=user)]

        return self._store.run(work, readonly=True)

    # --- reservations --------------------------------------------------------------------------

    def reserve(
        self, query_id: str, user: str, dataset: str, cost: PrivacyLoss, actor: str
    ) -> Reservation:
        """Hold `cost` (rounded up, in the ledger's unit) for query `query_id`, atomically.

        Idempotent on `query_id`: the same reservation again returns the first one unchanged
        (whatever its state now); the same id for another ledger or cost raises Conflict
        (QUERY_ID_CONFLICT).
        Raises BudgetExhausted, with `requested` and `remaining`, if any component does not fit.
        """
        _require(query_id=query_id, user=user, dataset=dataset, actor=actor)

        def work(session: LedgerSession) -> Reservation:
            stored = self._ledger(session, user, dataset, lock=True)
            balance = stored.balance
            charge = charge_in_ledger_unit(cost, balance.definition)
            existing = session.find_reservation(query_id)
            if existing is not None:
                if existing.ledger_id == balance.ledger_id and existing.cost == charge:
                    return existing
                raise Conflict(
                    "this query id was already used for another reservation",
                    reason="QUERY_ID_CONFLICT",
                    metadata={"query_id": query_id},
                )
            remaining = balance.remaining
            if _exceeds(charge, remaining):
                raise BudgetExhausted(
                    f"not enough privacy budget: requested {describe(charge)}, "
                    f"remaining {describe(remaining)}",
                    metadata={
                        "requested": describe(charge),
                        "remaining": describe(remaining),
                    },
                )
            now = self._clock()
            reservation = Reservation(
                query_id=query_id,
                ledger_id=balance.ledger_id,
                user=user,
                dataset=dataset,
                cost=charge,
                state=ReservationState.RESERVED,
                created_at=now,
                updated_at=now,
            )
            session.insert_reservation(reservation)
            self._append(session, stored, EntryKind.RESERVATION, charge, query_id, actor, "", now)
            return reservation

        return self._store.run(work)

    def mark_accessed(self, query_id: str, *, actor: str = "worker") -> Reservation:
        """Record that a worker is about to touch the data (RESERVED -> ACCESSED; idempotent).

        From now on the reservation can only be committed. FailedPrecondition (RESERVATION_RELEASED)
        if it was released; NotFound (RESERVATION_NOT_FOUND) if unknown.
        """

        def work(session: LedgerSession) -> Reservation:
            stored, reservation = self._reservation(session, query_id)
            if reservation.state is ReservationState.RELEASED:
                raise _released(query_id)
            if reservation.state is not ReservationState.RESERVED:
                return reservation
            zero = PrivacyLoss.zero(stored.balance.definition)
            return self._transition(
                session,
                stored,
                reservation,
                ReservationState.ACCESSED,
                EntryKind.ACCESS,
                zero,
                actor,
                "",
            )

        return self._store.run(work)

    def commit(self, query_id: str, *, actor: str = "worker") -> Reservation:
        """Charge a reservation (RESERVED or ACCESSED -> COMMITTED): spent += cost and
        reserved -= cost.

        Idempotent: committing again returns the committed reservation and charges nothing more.
        """

        def work(session: LedgerSession) -> Reservation:
            stored, reservation = self._reservation(session, query_id)
            if reservation.state is ReservationState.RELEASED:
                raise _released(query_id)
            if reservation.state is ReservationState.COMMITTED:
                return reservation
            return self._transition(
                session,
                stored,
                reservation,
                ReservationState.COMMITTED,
                EntryKind.COMMIT,
                reservation.cost,
                actor,
                "",
            )

        return self._store.run(work)

    def release(self, query_id: str, *, actor: str = "worker", reason: str = "") -> Reservation:
        """Return a reservation that never touched the data (RESERVED -> RELEASED; idempotent).

        FailedPrecondition (DATA_ACCESSED) once a worker touched the data or the charge is
        committed: there is no refund after data access.
        """

        def work(session: LedgerSession) -> Reservation:
            stored, reservation = self._reservation(session, query_id)
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
                stored,
                reservation,
                ReservationState.RELEASED,
                EntryKind.RELEASE,
                reservation.cost,
                actor,
                reason,
            )

        return self._store.run(work)

    def get_reservation(self, query_id: str) -> Reservation:
        """One reservation, or NotFound (RESERVATION_NOT_FOUND)."""

        def work(session: LedgerSession) -> Reservation:
            reservation = session.find_reservation(query_id)
            if reservation is None:
                raise _reservation_not_found(query_id)
            return reservation

        return self._store.run(work, readonly=True)

    # --- verification --------------------------------------------------------------------------

    def verify_ledger(self, ledger_id: str) -> list[str]:
        """Recompute one ledger from its entries and check its hash chain and reservations.

        Returns human-readable problems; an empty list means the ledger is consistent.
        """

        def work(session: LedgerSession) -> list[str]:
            return _verify(session, ledger_id)

        return self._store.run(work, readonly=True)

    def verify_all(self) -> list[str]:
        """`verify_ledger` for every ledger, in one snapshot."""

        def work(session: LedgerSession) -> list[str]:
            return [
                problem
                for ledger_id in session.ledger_ids()
                for problem in _verify(session, ledger_id)
            ]

        return self._store.run(work, readonly=True)

    def count_ledgers(self) -> int:
        """How many ledgers exist (reported beside a verification)."""
        return self._store.run(lambda session: len(session.ledger_ids()), readonly=True)

    # --- internals -----------------------------------------------------------------------------

    @staticmethod
    def _ledger(session: LedgerSession, user: str, dataset: str, *, lock: bool) -> StoredLedger:
        stored = session.find_ledger(user, dataset, for_update=lock)
        if stored is None:
            raise NotFound(
                "no budget ledger exists for this user and dataset",
                reason="LEDGER_NOT_FOUND",
            )
        return stored

    @staticmethod
    def _imported(session: LedgerSession, balance: LedgerBalance) -> PrivacyLoss:
        total = PrivacyLoss.zero(balance.definition)
        for entry in session.entries(balance.ledger_id):
            if entry.kind is EntryKind.IMPORTED_SPEND:
                total = _shift(total, _amount(entry, balance.definition), 1)
        return total

    @staticmethod
    def _reservation(session: LedgerSession, query_id: str) -> tuple[StoredLedger, Reservation]:
        """The reservation and its ledger, with the ledger row locked (the lock order of every
        writer: ledger first), re-reading the reservation under the lock."""
        _require(query_id=query_id)
        found = session.find_reservation(query_id)
        if found is None:
            raise _reservation_not_found(query_id)
        stored = session.get_ledger(found.ledger_id, for_update=True)
        reservation = session.find_reservation(query_id)
        if stored is None or reservation is None:
            raise _reservation_not_found(query_id)
        return stored, reservation

    def _transition(
        self,
        session: LedgerSession,
        stored: StoredLedger,
        reservation: Reservation,
        state: ReservationState,
        kind: EntryKind,
        amount: PrivacyLoss,
        actor: str,
        reason: str,
    ) -> Reservation:
        now = self._clock()
        updated = replace(reservation, state=state, updated_at=now)
        session.update_reservation(updated)
        self._append(session, stored, kind, amount, reservation.query_id, actor, reason, now)
        return updated

    @staticmethod
    def _append(
        session: LedgerSession,
        stored: StoredLedger,
        kind: EntryKind,
        amount: PrivacyLoss,
        query_id: str | None,
        actor: str,
        reason: str,
        now: str,
    ) -> StoredLedger:
        """Append one entry; update the cached balances and chain head in the same transaction."""
        balance = stored.balance
        seq = stored.entry_count + 1
        digest = entry_hash(
            balance,
            seq=seq,
            kind=kind,
            epsilon=amount.epsilon,
            delta=amount.delta,
            rho=amount.rho,
            query_id=query_id,
            actor=actor,
            reason=reason,
            created_at=now,
            prev_hash=stored.head_hash,
        )
        session.insert_entry(
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
                prev_hash=stored.head_hash,
                hash=digest,
            )
        )
        on_allocation, on_spent, on_reserved = _EFFECTS[kind]
        updated = StoredLedger(
            replace(
                balance,
                allocation=_shift(balance.allocation, amount, on_allocation),
                spent=_shift(balance.spent, amount, on_spent),
                reserved=_shift(balance.reserved, amount, on_reserved),
            ),
            entry_count=seq,
            head_hash=digest,
        )
        session.update_ledger(updated)
        return updated


def _released(query_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        "the reservation was released",
        reason="RESERVATION_RELEASED",
        metadata={"query_id": query_id},
    )


def _reservation_not_found(query_id: str) -> NotFound:
    return NotFound(
        "no reservation exists for this query id",
        reason="RESERVATION_NOT_FOUND",
        metadata={"query_id": query_id},
    )


def _amount(entry: LedgerEntry, definition: PrivacyDefinition) -> PrivacyLoss:
    return PrivacyLoss(definition, epsilon=entry.epsilon, delta=entry.delta, rho=entry.rho)


_Vector = dict[str, Decimal]


def _vector(loss: PrivacyLoss | None = None) -> _Vector:
    return {name: getattr(loss, name) if loss else Decimal(0) for name in _COMPONENTS}


def _verify(session: LedgerSession, ledger_id: str) -> list[str]:
    """Every inconsistency of one ledger, as text (never raises on tampered rows)."""
    prefix = f"ledger {ledger_id}"
    try:
        stored = session.get_ledger(ledger_id)
        if stored is None:
            return [f"{prefix}: not found"]
        entries = session.entries(ledger_id)
        reservations = session.reservations(ledger_id)
    except (
        ArithmeticError,
        ValueError,
    ) as error:  # tampered row: unreadable decimal, enum, ...
        return [f"{prefix}: unreadable row: {error}"]

    balance = stored.balance
    problems: list[str] = []
    totals = {"allocation": _vector(), "spent": _vector(), "reserved": _vector()}
    by_query: dict[str, list[LedgerEntry]] = {}
    prev_hash = GENESIS_HASH
    unused = [
        name
        for name in _COMPONENTS
        if name not in PrivacyLoss.zero(balance.definition).components()
    ]
    for expected_seq, entry in enumerate(entries, start=1):
        where = f"{prefix} entry {entry.seq}"
        if entry.seq != expected_seq:
            problems.append(f"{where}: expected sequence number {expected_seq}")
        if entry.prev_hash != prev_hash:
            problems.append(f"{where}: prev_hash does not match the previous entry's hash")
        recomputed = entry_hash(
            balance,
            seq=entry.seq,
            kind=entry.kind,
            epsilon=entry.epsilon,
            delta=entry.delta,
            rho=entry.rho,
            query_id=entry.query_id,
            actor=entry.actor,
            reason=entry.reason,
            created_at=entry.created_at,
            prev_hash=entry.prev_hash,
        )
        if recomputed != entry.hash:
            problems.append(f"{where}: hash mismatch (entry altered)")
        prev_hash = entry.hash
        for name in _COMPONENTS:
            value = getattr(entry, name)
            if value < 0 or (name in unused and value != 0):
                problems.append(f"{where}: invalid {name} {format_decimal(value)}")
        for total, sign in zip(totals.values(), _EFFECTS[entry.kind], strict=True):
            for name in _COMPONENTS:
                total[name] = _plus(total[name], getattr(entry, name), sign)
        if entry.query_id is not None:
            by_query.setdefault(entry.query_id, []).append(entry)

    if stored.entry_count != len(entries):
        problems.append(
            f"{prefix}: entry count {stored.entry_count} but {len(entries)} entries stored"
        )
    if stored.head_hash != prev_hash:
        problems.append(f"{prefix}: head hash does not match the last entry")
    for field, total in totals.items():
        cached = _vector(getattr(balance, field))
        for name in _COMPONENTS:
            if cached[name] != total[name]:
                problems.append(
                    f"{prefix}: cached {field} {name} {format_decimal(cached[name])} "
                    f"but entries give {format_decimal(total[name])}"
                )
    for name in _COMPONENTS:
        used = _plus(totals["spent"][name], totals["reserved"][name])
        if used > totals["allocation"][name]:
            problems.append(f"{prefix}: overspent {name}: spent + reserved {format_decimal(used)}")

    held = _vector()
    for reservation in reservations:
        where = f"{prefix} reservation {reservation.query_id}"
        kinds = [entry.kind for entry in by_query.pop(reservation.query_id, [])]
        reservation_entries = [
            entry
            for entry in entries
            if entry.query_id == reservation.query_id and entry.kind is EntryKind.RESERVATION
        ]
        if len(reservation_entries) != 1 or _vector(reservation.cost) != _vector(
            _amount(reservation_entries[0], balance.definition)
        ):
            problems.append(f"{where}: cost does not match exactly one reservation entry")
        expected = _expected_state(kinds)
        if expected is not reservation.state:
            found = expected.value if expected else "no valid state"
            problems.append(f"{where}: state {reservation.state.value} but entries give {found}")
        if reservation.state in (ReservationState.RESERVED, ReservationState.ACCESSED):
            for name in _COMPONENTS:
                held[name] = _plus(held[name], getattr(reservation.cost, name))
    for query_id in by_query:
        problems.append(f"{prefix}: entries for query {query_id} have no reservation")
    if held != totals["reserved"]:
        problems.append(f"{prefix}: open reservations do not add up to the reserved balance")
    return problems


def _expected_state(kinds: list[EntryKind]) -> ReservationState | None:
    if kinds.count(EntryKind.RESERVATION) != 1 or kinds[0] is not EntryKind.RESERVATION:
        return None
    if EntryKind.RELEASE in kinds:
        if (
            EntryKind.ACCESS in kinds
            or EntryKind.COMMIT in kinds
            or kinds.count(EntryKind.RELEASE) > 1
        ):
            return None
        return ReservationState.RELEASED
    if EntryKind.COMMIT in kinds:
        return ReservationState.COMMITTED if kinds.count(EntryKind.COMMIT) == 1 else None
    if EntryKind.ACCESS in kinds:
        return ReservationState.ACCESSED if kinds.count(EntryKind.ACCESS) == 1 else None
    return ReservationState.RESERVED


__all__ = [
    "GENESIS_HASH",
    "BudgetLedger",
    "EntryKind",
    "LedgerBalance",
    "LedgerEntry",
    "Reservation",
    "ReservationState",
    "StoredLedger",
    "charge_in_ledger_unit",
    "describe",
    "entry_hash",
]
