"""The life of a reservation: reserve, mark accessed, commit, release, and the sweep that settles
expired ones.

A reservation holds a query's cost against a ledger, keyed by the query id (which makes `reserve`
idempotent on its own: the same query id again returns the reservation; a request id on top returns
the first answer). It has an owner and an expiry:

    reserve -> RESERVED -> mark_accessed -> ACCESSED -> commit -> COMMITTED
               RESERVED -> release -> RELEASED  (only before any data access)
               RESERVED -> commit -> COMMITTED

Atomicity: a reservation check and its update happen in one transaction that holds the ledger row
lock (and, when the dataset has a cap, the dataset row lock), so concurrent reservations can never
overspend a ledger or a dataset cap. `sweep` releases an expired reservation that never reached a
worker and commits one whose worker touched the data (no refund after data access).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any, TypedDict, Unpack

from lomas_budget.accounting import charge_in_unit, describe, exceeds, loss_metadata
from lomas_budget.codec import RESERVATION, SWEEP, loss_params
from lomas_budget.journal import Pending
from lomas_budget.model import (
    MAX_RESERVATION_TTL_SECONDS,
    SWEEP_BATCH,
    SWEEPER,
    ZERO_AMOUNT,
    Amount,
    EntryKind,
    LedgerBalance,
    Reservation,
    ReservationState,
    SweepReport,
    stamp,
)
from lomas_budget.operations import LedgerOperations
from lomas_budget.refusals import (
    check_expected_cost,
    ledger_not_found,
    require,
    reservation_not_found,
    reservation_released,
)
from lomas_budget.store import LedgerSession
from lomas_common.errors import (
    BudgetExhausted,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from lomas_common.privacy import PrivacyLoss


class SettleOptions(TypedDict, total=False):
    """The options of `commit` and `release`: who settles the reservation (default "worker"), why
    (default: no reason), and the request id whose retries return the first answer."""

    actor: str
    reason: str
    request_id: str | None


class Reservations(LedgerOperations):
    """The reservation operations of the ledger (the query path: the gateway and the workers)."""

    def reserve(
        self,
        query_id: str,
        user: str,
        dataset: str,
        cost: PrivacyLoss,
        actor: str,
        *,
        owner: str | None = None,
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
        require(query_id=query_id, user=user, dataset=dataset, actor=actor)
        ttl = self.reservation_ttl_seconds if ttl_seconds is None else ttl_seconds
        if not 0 < ttl <= MAX_RESERVATION_TTL_SECONDS:
            raise InvalidArgument(
                "ttl_seconds must be positive and at most 7 days",
                reason="TTL_INVALID",
                metadata={"maxSeconds": str(MAX_RESERVATION_TTL_SECONDS)},
            )
        params = {
            "query_id": query_id,
            "user": user,
            "dataset": dataset,
            "cost": loss_params(cost),
            "owner": owner or actor,
            "ttl": ttl,
        }

        def work(session: LedgerSession) -> Reservation:
            balance, existing = session.lock_for_reservation(user, dataset, query_id)
            if balance is None:
                raise ledger_not_found()
            charge = charge_in_unit(cost, balance.definition)
            if existing is not None:
                if existing.ledger_id == balance.ledger_id and existing.cost == charge:
                    return existing
                raise Conflict(
                    "this query id was already used for another reservation",
                    reason="QUERY_ID_CONFLICT",
                    metadata={"queryId": query_id},
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
                    metadata={
                        **loss_metadata("requested", charge),
                        **loss_metadata("remaining", remaining),
                    },
                )
            cap = None
            if balance.capped:
                cap = session.lock_dataset(dataset, None).counting(charge, 1)
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
            pending = Pending(balance)
            pending.append(EntryKind.RESERVATION, Amount.of(charge), query_id, actor, "", now)
            session.write(pending.ledger, pending.entries, new_reservation=reservation, dataset=cap)
            return reservation

        return self._once(request_id, "reserve", params, work, RESERVATION)

    def mark_accessed(
        self,
        query_id: str,
        *,
        actor: str = "worker",
        request_id: str | None = None,
        expected_cost: PrivacyLoss | None = None,
        charge: bool = False,
    ) -> Reservation:
        """Record that a worker is about to touch the data (RESERVED -> ACCESSED; idempotent).

        From now on the reservation can only be committed. FailedPrecondition (RESERVATION_RELEASED)
        if it was released; NotFound (RESERVATION_NOT_FOUND) if unknown.

        `charge` commits at once (RESERVED or ACCESSED -> COMMITTED), the ACCESS entry and the
        COMMIT entry in one transaction: there is no refund after data access, so a worker that
        keeps the charge whatever happens next saves the later `commit` call.

        `expected_cost` is the worker's own cost of what it is about to run. When given, it must
        equal the reserved cost once expressed in the ledger's unit (as `reserve` expressed it);
        otherwise FailedPrecondition (COST_MISMATCH) and nothing is written, in any state, so the
        worker runs nothing whose cost differs from the charge.
        """

        def must_move(balance: LedgerBalance, reservation: Reservation) -> bool:
            if reservation.state is ReservationState.RELEASED:
                raise reservation_released(query_id)
            if expected_cost is not None:
                check_expected_cost(reservation, expected_cost, balance.definition)
            if charge:
                return reservation.state is not ReservationState.COMMITTED
            return reservation.state is ReservationState.RESERVED

        params: dict[str, Any] = {"query_id": query_id}
        if expected_cost is not None:
            params["expected_cost"] = loss_params(expected_cost)
        if charge:
            params["charge"] = True
        return self._move(
            "mark_accessed",
            params,
            query_id,
            ReservationState.COMMITTED if charge else ReservationState.ACCESSED,
            must_move,
            access_first=True,
            actor=actor,
            request_id=request_id,
        )

    def commit(self, query_id: str, **options: Unpack[SettleOptions]) -> Reservation:
        """Charge a reservation (RESERVED or ACCESSED -> COMMITTED): spent += cost and
        reserved -= cost.

        Idempotent: committing again returns the committed reservation and charges nothing more.
        """

        def must_move(balance: LedgerBalance, reservation: Reservation) -> bool:
            if reservation.state is ReservationState.RELEASED:
                raise reservation_released(query_id)
            return reservation.state is not ReservationState.COMMITTED

        params = {"query_id": query_id}
        return self._move(
            "commit", params, query_id, ReservationState.COMMITTED, must_move, **options
        )

    def release(self, query_id: str, **options: Unpack[SettleOptions]) -> Reservation:
        """Return a reservation that never touched the data (RESERVED -> RELEASED; idempotent).

        FailedPrecondition (DATA_ACCESSED) once a worker touched the data or the charge is
        committed: there is no refund after data access.
        """

        def must_move(balance: LedgerBalance, reservation: Reservation) -> bool:
            if reservation.state is ReservationState.RELEASED:
                return False
            if reservation.state is not ReservationState.RESERVED:
                raise FailedPrecondition(
                    "the query touched the data: its charge cannot be released",
                    reason="DATA_ACCESSED",
                    metadata={"queryId": query_id, "state": reservation.state.value},
                )
            return True

        params = {"query_id": query_id}
        return self._move(
            "release", params, query_id, ReservationState.RELEASED, must_move, **options
        )

    def get_reservation(self, query_id: str) -> Reservation:
        """One reservation, or NotFound (RESERVATION_NOT_FOUND)."""

        def work(session: LedgerSession) -> Reservation:
            reservation = session.find_reservation(query_id)
            if reservation is None:
                raise reservation_not_found(query_id)
            return reservation

        return self._read(work)

    def sweep(self, *, batch: int = SWEEP_BATCH, request_id: str | None = None) -> SweepReport:
        """Settle every reservation that expired by now: release one that never reached a worker,
        commit one whose worker touched the data. Safe to run anywhere, any number of times, also
        concurrently (each reservation is settled in its own transaction, under its row locks).

        Also forgets the first answers of request ids older than the retention period (a replay
        after that runs again, as a new request)."""
        if request_id:
            stored = self._read(lambda session: session.find_request(request_id))
            if stored is not None:
                return self._once(request_id, "sweep", {}, lambda session: SweepReport(), SWEEP)
        moment = self._clock()
        now = stamp(moment)
        released: list[str] = []
        committed: list[str] = []
        seen: set[str] = set()
        while True:
            expired = [
                query_id
                for query_id in self._read(lambda session: session.expired_reservations(now, batch))
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
        return self._once(request_id, "sweep", {}, lambda session: report, SWEEP)

    def _settle(self, session: LedgerSession, query_id: str, now: str) -> ReservationState | None:
        found = session.lock_reservation(query_id)
        if found is None:
            return None
        balance, reservation = found
        expiry = _EXPIRY.get(reservation.state)
        if reservation.expires_at > now or expiry is None:
            return None
        state, reason = expiry
        self._transition(session, balance, reservation, state, SWEEPER, reason)
        return state

    def _move(
        self,
        method: str,
        params: dict[str, Any],
        query_id: str,
        state: ReservationState,
        must_move: Callable[[LedgerBalance, Reservation], bool],
        *,
        access_first: bool = False,
        **options: Unpack[SettleOptions],
    ) -> Reservation:
        """Move reservation `query_id` to `state` in one transaction that locks it and its ledger,
        unless `must_move` finds it there already (False: the move is idempotent) or refuses to
        move it (raises). A request id is bound to `method` and `params`. `access_first`: a
        RESERVED reservation gets its ACCESS entry before the entry of `state`."""

        def work(session: LedgerSession) -> Reservation:
            require(query_id=query_id)
            found = session.lock_reservation(query_id)
            if found is None:
                raise reservation_not_found(query_id)
            balance, reservation = found
            if not must_move(balance, reservation):
                return reservation
            actor = options.get("actor") or "worker"
            reason = options.get("reason", "")
            accessing = access_first and reservation.state is ReservationState.RESERVED
            return self._transition(
                session, balance, reservation, state, actor, reason, access_first=accessing
            )

        return self._once(options.get("request_id"), method, params, work, RESERVATION)

    def _transition(
        self,
        session: LedgerSession,
        balance: LedgerBalance,
        reservation: Reservation,
        state: ReservationState,
        actor: str,
        reason: str,
        *,
        access_first: bool = False,
    ) -> Reservation:
        """Move `reservation` to `state`, with the journal entry that records it (after an ACCESS
        entry when `access_first`: data access and the charge recorded together)."""
        now = self._now()
        updated = replace(reservation, state=state, updated_at=now)
        kind = _ENTRY_KINDS[state]
        amount = ZERO_AMOUNT if kind is EntryKind.ACCESS else Amount.of(reservation.cost)
        pending = Pending(balance)
        if access_first and kind is not EntryKind.ACCESS:
            pending.append(EntryKind.ACCESS, ZERO_AMOUNT, reservation.query_id, actor, reason, now)
        pending.append(kind, amount, reservation.query_id, actor, reason, now)
        cap = None
        if kind is EntryKind.RELEASE and balance.capped:
            cap = session.lock_dataset(balance.dataset, None).counting(reservation.cost, -1)
        session.write(pending.ledger, pending.entries, reservation_update=updated, dataset=cap)
        return updated


# The journal entry that records a reservation's move to each state.
_ENTRY_KINDS = {
    ReservationState.ACCESSED: EntryKind.ACCESS,
    ReservationState.COMMITTED: EntryKind.COMMIT,
    ReservationState.RELEASED: EntryKind.RELEASE,
}
# What the sweep does with an expired reservation, by its state: the state it leads to, and why.
_EXPIRY = {
    ReservationState.RESERVED: (ReservationState.RELEASED, "expired before reaching a worker"),
    ReservationState.ACCESSED: (
        ReservationState.COMMITTED,
        "expired after data access: the charge is kept",
    ),
}


__all__ = ["Reservations", "SettleOptions"]
