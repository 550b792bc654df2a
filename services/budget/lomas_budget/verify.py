"""Verification of the ledger: recompute everything from the entries, in one snapshot, one pass.

For every ledger, `verify_snapshot` reads its row, then its entries in order and its reservations
(three streams merged on the ledger id, so a ledger of millions of entries is never held in
memory), and checks:

* the chain: sequence numbers 1..n, each `prev_hash` is the previous entry's hash, each hash is the
  hash of the entry's fields, the row's entry count and head hash are those of the last entry;
* the amounts: readable decimals, negative only in adjustments, zero in the components the ledger's
  definition does not use, zero in access and freeze entries;
* the balances: allocation, spent and reserved recomputed from the entries equal the cached ones,
  and spent + reserved never exceeded the allocation after any entry;
* the reservations: each query's entries follow reservation -> (access) -> commit | release, with
  the reserved amount, and the reservation rows agree (state, cost); the open ones add up to the
  reserved balance;
* the freeze: the row's flag is what the last freeze/unfreeze entry says, and agrees with the user's;
* the dataset caps: what the dataset's ledgers spent or hold, converted charge by charge to the
  cap's unit, equals the cap's cached use and fits the cap; `capped` flags agree.
* the anchors, when the service keeps checkpoints (`lomas_budget.anchoring`): each ledger's stored
  entry at its latest checkpoint's count carries the checkpoint's head hash (so a consistent
  rewrite of the chain up to there is caught), no checkpointed ledger or entry is gone, and every
  line of the checkpoint file is an authentic checkpoint.

It never raises on a tampered row: every inconsistency becomes a line of text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from lomas_budget.accounting import EXACT, charge_in_unit, exceeds, shift
from lomas_budget.anchoring import Anchors
from lomas_budget.journal import chain_hash, chain_prefix
from lomas_budget.model import GENESIS_HASH, DatasetCap, EntryKind, ReservationState
from lomas_budget.store import LedgerSession
from lomas_common.errors import LomasError
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss, format_decimal

MAX_PROBLEMS_PER_LEDGER = 100
_COMPONENTS = ("epsilon", "delta", "rho")
_USED_COMPONENTS = {
    PrivacyDefinition.APPROX_DP.value: (True, True, False),
    PrivacyDefinition.PURE_DP.value: (True, False, False),
    PrivacyDefinition.RHO_ZCDP.value: (False, False, True),
}
_KINDS = {kind.value for kind in EntryKind}
_ZERO = Decimal(0)
_RESERVATION = EntryKind.RESERVATION.value
_ACCESS = EntryKind.ACCESS.value
_COMMIT = EntryKind.COMMIT.value
_RELEASE = EntryKind.RELEASE.value
_ADJUSTMENT = EntryKind.ADJUSTMENT.value
_IMPORTED = EntryKind.IMPORTED_SPEND.value
_ALLOCATION = EntryKind.ALLOCATION.value
_FREEZE = EntryKind.FREEZE.value
_UNFREEZE = EntryKind.UNFREEZE.value
_OPEN_STATES = {ReservationState.RESERVED.value, ReservationState.ACCESSED.value}
_RELEASED = ReservationState.RELEASED.value
_INVALID = "invalid"
# Which query state each transition entry leads to, from which states.
_TRANSITIONS = {
    _ACCESS: ({"reserved"}, "accessed"),
    _COMMIT: ({"reserved", "accessed"}, "committed"),
    _RELEASE: ({"reserved"}, "released"),
}


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """What a verification checked and every inconsistency it found (empty: all consistent)."""

    ledgers_checked: int
    entries_checked: int
    problems: tuple[str, ...]


def canonical_decimal(text: str) -> str:
    """The `format_decimal` text of a stored decimal (PostgreSQL prints NUMERIC(38, 18) with
    trailing zeros; SQLite keeps the text it was given)."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


class _Stream:
    """A row iterator that can look at its next row (`head`)."""

    def __init__(self, rows: Iterator[Any]) -> None:
        self.rows = rows
        self.head: Any = next(rows, None)

    def take(self) -> Any:
        row = self.head
        self.head = next(self.rows, None)
        return row


class _Amounts:
    """Stored decimal texts -> (canonical text, value), memoised: a ledger repeats few amounts."""

    def __init__(self) -> None:
        self._known: dict[Any, tuple[str, Decimal]] = {}

    def read(self, text: Any) -> tuple[str, Decimal]:
        known = self._known.get(text)
        if known is None:
            known = (canonical_decimal(str(text)), _decimal(text))
            if len(self._known) < 100_000:
                self._known[text] = known
        return known


class _Problems:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lines: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.lines) < MAX_PROBLEMS_PER_LEDGER:
            self.lines.append(text)
        else:
            self.dropped += 1

    def result(self) -> list[str]:
        if self.dropped:
            return [*self.lines, f"{self.prefix}: {self.dropped} more problems not shown"]
        return self.lines


def verify_snapshot(
    session: LedgerSession, ledger_id: str | None = None, anchors: Anchors | None = None
) -> VerificationReport:
    """Verify every ledger (or one) as one snapshot of the store sees it, against `anchors` (the
    checkpoints, read before the snapshot) when given."""
    with localcontext(EXACT):
        return _verify(session, ledger_id, anchors)


def _verify(
    session: LedgerSession, ledger_id: str | None, anchors: Anchors | None
) -> VerificationReport:
    caps = session.capped_datasets()
    frozen_users = session.frozen_users()
    entries = _Stream(session.stream_entries(ledger_id))
    reservations = _Stream(session.stream_reservations(ledger_id))
    problems: list[str] = []
    cap_use: dict[str, PrivacyLoss] = {
        name: PrivacyLoss.zero(cap.cap.definition)
        for name, cap in caps.items()
        if cap.cap is not None
    }
    ledgers_checked = entries_checked = 0
    amounts = _Amounts()
    stored: set[str] = set()
    for row in session.stream_ledgers(ledger_id):
        current = row["id"]
        problems += _orphans(entries, reservations, current)
        ledgers_checked += 1
        check = _LedgerCheck(row, caps.get(row["dataset_name"]), frozen_users, amounts)
        if anchors is not None and current in anchors.latest:
            check.anchor_seq = anchors.latest[current].entry_count
        check.entries(entries)
        while reservations.head is not None and reservations.head[1] == current:
            check.reservation(reservations.take())
        problems += check.finish()
        if anchors is not None:
            problems += anchors.check_ledger(row, check.count, check.anchored_hash)
            stored.add(current)
        entries_checked += check.count
        dataset = row["dataset_name"]
        if dataset in cap_use and check.cap_use is not None:
            cap_use[dataset] = shift(cap_use[dataset], check.cap_use, 1)
    problems += _orphans(entries, reservations, None)
    if ledger_id is not None and ledgers_checked == 0:
        problems.append(f"ledger {ledger_id}: not found")
    if ledger_id is None:
        problems += _check_caps(caps, cap_use)
    if anchors is not None:
        problems += anchors.problems
        if ledger_id is None:
            problems += anchors.missing(stored)
    return VerificationReport(ledgers_checked, entries_checked, tuple(problems))


def _orphans(entries: _Stream, reservations: _Stream, before: str | None) -> list[str]:
    """Rows of ledgers that do not exist (ordered before `before`, or all left when None)."""
    found: dict[str, int] = {}
    for stream, column in ((entries, 0), (reservations, 1)):
        while stream.head is not None and (before is None or stream.head[column] < before):
            orphan = stream.take()[column]
            found[orphan] = found.get(orphan, 0) + 1
    return [f"ledger {orphan}: {count} rows but no ledger" for orphan, count in found.items()]


def _check_caps(caps: dict[str, DatasetCap], cap_use: dict[str, PrivacyLoss]) -> list[str]:
    problems = []
    for name, cap in caps.items():
        if cap.cap is None or cap.used is None:
            continue
        recomputed = cap_use[name]
        if recomputed != cap.used:
            problems.append(
                f"dataset {name}: cached cap use {cap.used} but ledgers give {recomputed}"
            )
        if exceeds(recomputed, cap.cap):
            problems.append(f"dataset {name}: ledgers use {recomputed}, above the cap {cap.cap}")
    return problems


def _decimal(text: Any) -> Decimal:
    value = Decimal(text)
    if not value.is_finite():
        raise InvalidOperation
    return value


class _LedgerCheck:
    """The checks of one ledger, fed its entries then its reservations, in order."""

    def __init__(
        self,
        row: dict[str, Any],
        cap: DatasetCap | None,
        frozen_users: set[str],
        amounts: _Amounts,
    ) -> None:
        self.id = row["id"]
        self.prefix = f"ledger {self.id}"
        self.problems = _Problems(self.prefix)
        self.row = row
        self.cap = cap
        self.frozen_users = frozen_users
        self.amounts = amounts
        self.count = 0
        self.prev_hash = GENESIS_HASH
        self.frozen = False
        # allocation, spent, reserved x epsilon, delta, rho
        self.totals = [[_ZERO, _ZERO, _ZERO] for _ in range(3)]
        self.queries: dict[str, list[Any]] = {}  # query id -> [state, eps, delta, rho texts]
        self.imported: list[tuple[Decimal, Decimal, Decimal]] = []
        self.held = [_ZERO, _ZERO, _ZERO]
        self.reserved_rows: set[str] = set()
        self.cap_use: PrivacyLoss | None = None
        # The seq of the latest checkpoint's head (0: none) and the stored hash of that entry.
        self.anchor_seq = 0
        self.anchored_hash: str | None = None
        self.readable = True
        try:
            self.user = row["user_name"]
            self.dataset = row["dataset_name"]
            self.definition = row["definition"]
            self.used_components = _USED_COMPONENTS[self.definition]
            self.cached = [
                [_decimal(row[f"{balance}_{name}"]) for name in _COMPONENTS]
                for balance in ("allocation", "spent", "reserved")
            ]
        except (KeyError, ArithmeticError, ValueError, TypeError) as error:
            self.problems.add(f"{self.prefix}: unreadable row: {error!r}")
            self.readable = False

    def entries(self, stream: _Stream) -> None:
        """Check every entry of this ledger at the head of `stream` (tuples in the store's
        entry column order), in one tight loop: it runs once per entry of the whole ledger."""
        ledger_id = self.id
        row = stream.head
        rows = stream.rows
        if not self.readable:
            while row is not None and row[0] == ledger_id:
                self.count += 1
                row = next(rows, None)
            stream.head = row
            return
        add = self.problems.add
        read = self.amounts.read
        queries = self.queries
        prefix = chain_prefix(ledger_id, self.user, self.dataset, self.definition)
        uses_epsilon, uses_delta, uses_rho = self.used_components
        # Running totals: allocated (a_*), spent (s_*) and charged (c_*) = spent + reserved, what
        # the allocation must cover after every entry.
        (a_e, a_d, a_r), (s_e, s_d, s_r), (r_e, r_d, r_r) = self.totals
        c_e, c_d, c_r = s_e + r_e, s_d + r_d, s_r + r_r
        count = self.count
        last_hash = self.prev_hash
        frozen = self.frozen
        overspent = False
        anchor_seq = self.anchor_seq
        while row is not None and row[0] == ledger_id:
            (_, seq, kind, epsilon_text, delta_text, rho_text, query_id, actor, reason,
             created_at, prev_hash, stored_hash) = row  # fmt: skip
            count += 1
            if seq == anchor_seq:
                self.anchored_hash = stored_hash
            where = ""
            if seq != count:
                where = f"{self.prefix} entry {seq}"
                add(f"{where}: expected sequence number {count}")
            try:
                (epsilon, e), (delta, d), (rho, r) = (
                    read(epsilon_text),
                    read(delta_text),
                    read(rho_text),
                )
            except (ArithmeticError, ValueError, TypeError):
                add(f"{self.prefix} entry {seq}: unreadable amount")
                last_hash = stored_hash
                row = next(rows, None)
                continue
            if prev_hash != last_hash:
                add(
                    f"{self.prefix} entry {seq}: prev_hash does not match the previous entry's hash"
                )
            digest = chain_hash(
                prefix, seq, kind, epsilon, delta, rho, query_id, actor, reason, created_at,
                prev_hash,
            )  # fmt: skip
            if digest != stored_hash:
                add(f"{self.prefix} entry {seq}: hash mismatch (entry altered)")
            last_hash = stored_hash
            row = next(rows, None)
            if (
                (e and not uses_epsilon)
                or (d and not uses_delta)
                or (r and not uses_rho)
                or ((e < 0 or d < 0 or r < 0) and kind != _ADJUSTMENT)
            ):
                for name, value, used in (
                    ("epsilon", e, uses_epsilon),
                    ("delta", d, uses_delta),
                    ("rho", r, uses_rho),
                ):
                    if (value < 0 and kind != _ADJUSTMENT) or (not used and value != 0):
                        add(f"{self.prefix} entry {seq}: invalid {name} {format_decimal(value)}")
            # How the entry moves the totals (see `EFFECTS`): a commit moves its amount from
            # reserved to spent, so it leaves `charged` as it is.
            check_overspend = False
            if kind == _ALLOCATION or kind == _ADJUSTMENT:
                a_e += e
                a_d += d
                a_r += r
                check_overspend = True
            elif kind == _RESERVATION or kind == _IMPORTED:
                c_e += e
                c_d += d
                c_r += r
                check_overspend = True
                if kind == _IMPORTED:
                    s_e += e
                    s_d += d
                    s_r += r
                    self.imported.append((e, d, r))
            elif kind == _COMMIT:
                s_e += e
                s_d += d
                s_r += r
            elif kind == _RELEASE:
                c_e -= e
                c_d -= d
                c_r -= r
            elif kind not in _KINDS:
                add(f"{self.prefix} entry {seq}: unknown kind {kind!r}")
                continue
            elif e or d or r:
                add(f"{self.prefix} entry {seq}: a {kind} entry moves no budget but has an amount")
            if check_overspend and not overspent:
                for name, allocation, charged in (
                    ("epsilon", a_e, c_e),
                    ("delta", a_d, c_d),
                    ("rho", a_r, c_r),
                ):
                    if charged > allocation:
                        overspent = True
                        add(
                            f"{self.prefix} entry {seq}: spent + reserved exceed the allocation ({name})"
                        )
                        break
            if kind == _FREEZE or kind == _UNFREEZE:
                frozen = kind == _FREEZE
            if query_id is None:
                if kind == _RESERVATION or kind in _TRANSITIONS:
                    add(f"{self.prefix} entry {seq}: a {kind} entry without a query id")
                continue
            if kind == _RESERVATION:
                if query_id in queries:
                    queries[query_id][0] = _INVALID
                    add(f"{self.prefix} entry {seq}: query {query_id} reserved twice")
                else:
                    queries[query_id] = ["reserved", epsilon, delta, rho]
                continue
            transition = _TRANSITIONS.get(kind)
            if transition is None:
                add(f"{self.prefix} entry {seq}: a {kind} entry with a query id")
                continue
            allowed, state = transition
            tracked = queries.get(query_id)
            if tracked is None:
                queries[query_id] = [_INVALID, "0", "0", "0"]
                add(f"{self.prefix} entry {seq}: {kind} of query {query_id} before its reservation")
            elif tracked[0] not in allowed:
                if tracked[0] != _INVALID:
                    add(
                        f"{self.prefix} entry {seq}: {kind} of query {query_id} in state {tracked[0]}"
                    )
                tracked[0] = _INVALID
            elif kind != _ACCESS and (
                epsilon != tracked[1] or delta != tracked[2] or rho != tracked[3]
            ):
                add(
                    f"{self.prefix} entry {seq}: {kind} of query {query_id} for another amount than reserved"
                )
                tracked[0] = _INVALID
            else:
                tracked[0] = state
        stream.head = row
        self.totals = [[a_e, a_d, a_r], [s_e, s_d, s_r], [c_e - s_e, c_d - s_d, c_r - s_r]]
        self.count = count
        self.prev_hash = last_hash
        self.frozen = frozen

    def reservation(self, row: tuple[Any, ...]) -> None:
        """Check one reservation row (a tuple in the store's reservation column order)."""
        if not self.readable:
            return
        query_id, _, epsilon_text, delta_text, rho_text, state = row[:6]
        self.reserved_rows.add(query_id)
        tracked = self.queries.get(query_id)
        try:
            (epsilon, e), (delta, d), (rho, r) = (
                self.amounts.read(epsilon_text),
                self.amounts.read(delta_text),
                self.amounts.read(rho_text),
            )
        except (ArithmeticError, ValueError, TypeError):
            self.problems.add(f"{self.prefix} reservation {query_id}: unreadable cost")
            return
        if tracked is None or (tracked[1], tracked[2], tracked[3]) != (epsilon, delta, rho):
            self.problems.add(
                f"{self.prefix} reservation {query_id}: "
                "cost does not match exactly one reservation entry"
            )
        derived = tracked[0] if tracked is not None and tracked[0] != _INVALID else None
        if derived != state:
            self.problems.add(
                f"{self.prefix} reservation {query_id}: "
                f"state {state} but entries give {derived or 'no valid state'}"
            )
        if state in _OPEN_STATES:
            held = self.held
            held[0] += e
            held[1] += d
            held[2] += r

    def finish(self) -> list[str]:
        if not self.readable:
            return self.problems.result()
        add = self.problems.add
        row = self.row
        if int(row["entry_count"]) != self.count:
            add(f"{self.prefix}: entry count {row['entry_count']} but {self.count} entries stored")
        if row["head_hash"] != self.prev_hash:
            add(f"{self.prefix}: head hash does not match the last entry")
        for balance, cached, total in zip(
            ("allocation", "spent", "reserved"), self.cached, self.totals, strict=True
        ):
            for name, cached_value, total_value in zip(_COMPONENTS, cached, total, strict=True):
                if cached_value != total_value:
                    add(
                        f"{self.prefix}: cached {balance} {name} {format_decimal(cached_value)} "
                        f"but entries give {format_decimal(total_value)}"
                    )
        for query_id in self.queries.keys() - self.reserved_rows:
            add(f"{self.prefix}: entries for query {query_id} have no reservation")
        if self.held != self.totals[2]:
            add(f"{self.prefix}: open reservations do not add up to the reserved balance")
        if bool(row["frozen"]) != self.frozen:
            add(
                f"{self.prefix}: frozen flag {int(row['frozen'])} but entries give {int(self.frozen)}"
            )
        if self.frozen != (self.user in self.frozen_users):
            add(f"{self.prefix}: frozen {int(self.frozen)} but its user's freeze disagrees")
        capped = self.cap is not None and self.cap.cap is not None
        if bool(row["capped"]) != capped:
            add(f"{self.prefix}: capped flag {int(row['capped'])} but the dataset's cap disagrees")
        if capped:
            self._count_cap_use()
        return self.problems.result()

    def _count_cap_use(self) -> None:
        assert self.cap is not None and self.cap.cap is not None
        unit = self.cap.cap.definition
        definition = PrivacyDefinition(self.definition)
        charges = [*self.imported]
        charges += [
            (Decimal(q[1]), Decimal(q[2]), Decimal(q[3]))
            for q in self.queries.values()
            if q[0] != _RELEASED
        ]
        total = PrivacyLoss.zero(unit)
        try:
            for epsilon, delta, rho in charges:
                charge = PrivacyLoss(definition, epsilon=epsilon, delta=delta, rho=rho)
                total = shift(total, charge_in_unit(charge, unit), 1)
        except (ArithmeticError, ValueError, LomasError) as error:
            self.problems.add(f"{self.prefix}: a charge cannot count against the cap: {error}")
            return
        self.cap_use = total
