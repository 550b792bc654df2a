"""The budget ledger service: the only writer of privacy spend.

One ledger per (user, dataset) grant, kept in the unit of one privacy definition (see
`lomas_budget.accounting`). Every change is an entry in an append-only, hash-chained journal
(`lomas_budget.journal`), and the cached balances on the ledger row change in the same transaction
as the entry that changes them (the entry kinds and their effects: `lomas_budget.model`). Balances
always derive from the entries; `lomas_budget.verify` recomputes them and checks the chains.

`BudgetLedger` is the service's one entry point: ledgers, allocations, users' freezes and dataset
caps here, the reservation life cycle in `lomas_budget.reservations` (which it extends), request-id
replays in `lomas_budget.operations`.

Lock order, for every writer: the user row, then ledger rows, then the dataset row
(`set_dataset_cap` re-reads under the dataset lock the ledgers it could not lock first).
"""

from __future__ import annotations

from dataclasses import replace

from lomas_budget.accounting import (
    CAP_ACCEPTS,
    charge_in_unit,
    definition_mismatch,
    exceeds,
    loss_metadata,
    plus,
    shift,
    storable,
)
from lomas_budget.anchoring import Checkpoint
from lomas_budget.codec import BALANCE, CAP, USER, loss_params
from lomas_budget.journal import Pending
from lomas_budget.model import (
    ZERO_AMOUNT,
    Amount,
    DatasetCap,
    EntryKind,
    LedgerBalance,
    LedgerEntry,
    UserState,
)
from lomas_budget.refusals import cap_mismatch, ledger_not_found, require
from lomas_budget.reservations import Reservations
from lomas_budget.store import LedgerSession
from lomas_budget.verify import VerificationReport, verify_snapshot
from lomas_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from lomas_common.privacy import PrivacyLoss


class BudgetLedger(Reservations):
    """Privacy-budget ledgers: open, adjust, freeze, cap, read history, verify; and (inherited from
    `Reservations`) reserve, mark accessed, commit, release, sweep."""

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
        require(user=user, dataset=dataset, actor=actor)
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
                metadata={
                    **loss_metadata("allocation", granted),
                    **loss_metadata("alreadySpent", imported),
                },
            )
        reason = f"request_id={request_id}" if request_id else ""
        params = {
            "user": user,
            "dataset": dataset,
            "allocation": loss_params(granted),
            "already_spent": loss_params(imported),
        }

        def work(session: LedgerSession) -> LedgerBalance:
            user_state = session.lock_user(user, self._now())
            cap = session.lock_dataset(dataset, self._now())
            existing = session.find_ledger(user, dataset)
            if existing is not None:
                if existing.allocation == granted and _imported(session, existing) == imported:
                    return existing
                raise AlreadyExists(
                    "a ledger with a different allocation exists for this user and dataset",
                    reason="LEDGER_ALREADY_EXISTS",
                    metadata=loss_metadata("allocation", existing.allocation),
                )
            if cap.cap is not None and definition not in CAP_ACCEPTS[cap.cap.definition]:
                raise cap_mismatch(cap.cap.definition, definition)
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
            pending = Pending(balance)
            pending.append(EntryKind.ALLOCATION, Amount.of(granted), None, actor, reason, now)
            if imported != zero:
                cap = cap.counting(imported, 1)
                pending.append(
                    EntryKind.IMPORTED_SPEND, Amount.of(imported), None, actor, reason, now
                )
            if user_state.frozen:
                pending.append(
                    EntryKind.FREEZE, ZERO_AMOUNT, None, user_state.actor, user_state.reason, now
                )
            counted = cap if cap.cap is not None and imported != zero else None
            session.write(pending.ledger, pending.entries, dataset=counted)
            return pending.ledger

        return self._once(request_id, "open_ledger", params, work, BALANCE)

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
        require(user=user, dataset=dataset, actor=actor)
        target = storable(allocation.as_allocation(), "allocation")
        params = {"user": user, "dataset": dataset, "allocation": loss_params(target)}

        def work(session: LedgerSession) -> LedgerBalance:
            balance = session.find_ledger(user, dataset, for_update=True)
            if balance is None:
                raise ledger_not_found()
            if target.definition is not balance.definition:
                raise definition_mismatch(target.definition, balance.definition)
            used = shift(balance.spent, balance.reserved, 1)
            if exceeds(used, target):
                raise FailedPrecondition(
                    "an allocation cannot be lowered below what is spent or held",
                    reason="ALLOCATION_BELOW_SPENT",
                    metadata={
                        **loss_metadata("allocation", target),
                        **loss_metadata("spent", balance.spent),
                        **loss_metadata("reserved", balance.reserved),
                    },
                )
            if target == balance.allocation:
                return balance
            difference = Amount(
                plus(target.epsilon, balance.allocation.epsilon, -1),
                plus(target.delta, balance.allocation.delta, -1),
                plus(target.rho, balance.allocation.rho, -1),
            )
            pending = Pending(balance)
            pending.append(EntryKind.ADJUSTMENT, difference, None, actor, reason, self._now())
            session.write(pending.ledger, pending.entries)
            return pending.ledger

        return self._once(request_id, "adjust_allocation", params, work, BALANCE)

    def get_balance(self, user: str, dataset: str) -> LedgerBalance:
        """The balance of one ledger, or NotFound (LEDGER_NOT_FOUND)."""

        def work(session: LedgerSession) -> LedgerBalance:
            balance = session.find_ledger(user, dataset)
            if balance is None:
                raise ledger_not_found()
            return balance

        return self._read(work)

    def list_balances(
        self, user: str, *, after_dataset: str | None = None, limit: int = 100
    ) -> tuple[list[LedgerBalance], bool]:
        """A page of one user's ledgers, by dataset: at most `limit` after `after_dataset` (from
        the first when None), and whether more follow."""
        balances = self._read(
            lambda session: session.user_ledgers_page(
                user, after_dataset=after_dataset, limit=limit + 1
            )
        )
        return balances[:limit], len(balances) > limit

    def list_entries(
        self, user: str, dataset: str, *, after_seq: int = 0, limit: int = 100
    ) -> tuple[LedgerBalance, list[LedgerEntry], bool]:
        """A ledger's history: its entries after `after_seq`, oldest first, at most `limit`, and
        whether more follow."""

        def work(session: LedgerSession) -> tuple[LedgerBalance, list[LedgerEntry], bool]:
            balance = session.find_ledger(user, dataset)
            if balance is None:
                raise ledger_not_found()
            entries = session.entries(balance.ledger_id, after_seq=after_seq, limit=limit + 1)
            return balance, entries[:limit], len(entries) > limit

        return self._read(work)

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

        return self._read(work)

    def _set_frozen(
        self, user: str, frozen: bool, actor: str, reason: str, request_id: str | None
    ) -> UserState:
        require(user=user, actor=actor)
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
                pending = Pending(balance)
                pending.append(kind, ZERO_AMOUNT, None, actor, reason, now)
                session.write(pending.ledger, pending.entries)
                updated.append(pending.ledger)
            return replace(state, ledgers=tuple(updated))

        return self._once(request_id, method, {"user": user}, work, USER)

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
        require(dataset=dataset, actor=actor)
        bound = storable(cap.as_allocation(), "cap") if cap is not None else None
        params = {"dataset": dataset, "cap": loss_params(bound)}

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
                    raise cap_mismatch(bound.definition, balance.definition)
            used = PrivacyLoss.zero(bound.definition)
            for charge in session.dataset_charges(dataset):
                used = shift(used, charge_in_unit(charge, bound.definition), 1)
            if exceeds(used, bound):
                raise FailedPrecondition(
                    "the cap is below what the dataset's ledgers already spent or hold",
                    reason="DATASET_CAP_BELOW_USED",
                    metadata={**loss_metadata("cap", bound), **loss_metadata("used", used)},
                )
            updated = DatasetCap(dataset, bound, used, actor, reason, now)
            session.update_dataset(updated)
            session.set_capped([b.ledger_id for b in ledgers], True)
            return updated

        return self._once(request_id, "set_dataset_cap", params, work, CAP)

    def get_dataset_cap(self, dataset: str) -> DatasetCap:
        """A dataset's cap (`cap` is None when it has none)."""
        return self._read(lambda session: session.get_dataset(dataset))

    # --- verification --------------------------------------------------------------------------

    def verify(self, ledger_id: str | None = None) -> VerificationReport:
        """Recompute every balance (or one ledger's) from its entries, check every hash chain,
        reservation, freeze and dataset cap, in one snapshot, and every chain against its latest
        checkpoint when the ledger keeps them. See `lomas_budget.verify`."""
        # The checkpoints are read first: none can then be newer than what the snapshot shows.
        anchors = self.anchor.anchors() if self.anchor is not None else None
        return self._read(lambda session: verify_snapshot(session, ledger_id, anchors))

    def checkpoint(self) -> list[Checkpoint]:
        """Anchor every ledger whose chain moved since its latest checkpoint (see
        `lomas_budget.anchoring`); nothing when the ledger keeps no checkpoints."""
        return self.anchor.checkpoint(self._store) if self.anchor is not None else []

    def verify_ledger(self, ledger_id: str) -> list[str]:
        """The problems of one ledger; an empty list means it is consistent."""
        return list(self.verify(ledger_id).problems)

    def verify_all(self) -> list[str]:
        """The problems of every ledger; an empty list means they are all consistent."""
        return list(self.verify().problems)

    def count_ledgers(self) -> int:
        """How many ledgers exist."""
        return self._read(lambda session: session.count_ledgers())


def _imported(session: LedgerSession, balance: LedgerBalance) -> PrivacyLoss:
    """What a ledger's imported-spend entries add up to."""
    total = PrivacyLoss.zero(balance.definition)
    for entry in session.entries(balance.ledger_id, kind=EntryKind.IMPORTED_SPEND):
        total = shift(total, entry.loss(balance.definition), 1)
    return total
