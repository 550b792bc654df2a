"""Reconciliation of the budget ledger with the query archive, query id by query id.

The ledger says what each query was charged (its entries: reservation, access, commit or release);
the archive says what each query's caller got (a release, a failure after data access, or a failure
refunded before it). They must agree:

* every committed charge has an archived outcome (a release or a reported failure);
* every archived release, and every failure archived with a cost, has exactly one committed charge,
  of the archived cost, in the ledger of the archived user and dataset;
* a failure archived at zero cost (refunded before data access) has no committed charge.

A reservation released with no archived outcome is a refund (a query cancelled or given up before it
touched data: cancellations are not archived) and is fine; one still held (reserved or accessed) is
in flight, and so is an archived outcome whose charge is being committed: neither is a problem.

Reads and races: the ledger is read first, then the archive. A worker stores the outcome and commits
the charge at the same time, so a query that finishes between the two reads may show a charge
without its outcome, or the other way round; every mismatch is therefore read again, query by query
(`GetReservation`, `GetArchivedQuery`), and reported only if it persists. What a crashed worker
leaves for its redelivery to finish (a charge whose outcome is not stored yet) is reported until the
redelivery stores it.

Which ledgers: those of every user the admin store knows and every user the archive names (a user
deleted since still has ledgers). A deleted user's charges with no archived outcome at all are out
of reach of the existing RPCs (the ledger lists ledgers by user).

It speaks the peers' protobuf messages, never gRPC itself (like `administration.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lomas.admin.v1 import admin_store_pb2
from lomas.budget.v1 import budget_pb2
from lomas.common.v1 import archive_pb2, privacy_pb2
from lomas_common.convert import privacy_loss_from_proto
from lomas_common.errors import Code, LomasError
from lomas_common.privacy import PrivacyLoss, format_decimal
from lomas_gateway.relay import Peer

# Archive pages carry releases (Arrow streams): smaller pages keep each answer a modest size.
ARCHIVE_PAGE_SIZE = 100
PAGE_SIZE = 1000

_KINDS = budget_pb2.LedgerEntryKind
_STATES = budget_pb2.ReservationState
_STATE_NAMES = {
    _STATES.RESERVATION_STATE_RESERVED: "reserved",
    _STATES.RESERVATION_STATE_ACCESSED: "accessed",
    _STATES.RESERVATION_STATE_COMMITTED: "committed",
    _STATES.RESERVATION_STATE_RELEASED: "released",
}
_BY_ENTRY = {
    _KINDS.LEDGER_ENTRY_KIND_RESERVATION: "reserved",
    _KINDS.LEDGER_ENTRY_KIND_ACCESS: "accessed",
    _KINDS.LEDGER_ENTRY_KIND_COMMIT: "committed",
    _KINDS.LEDGER_ENTRY_KIND_RELEASE: "released",
}
_OPEN = ("reserved", "accessed")


@dataclass
class Charge:
    """What the ledger holds for one query id."""

    user: str
    dataset: str
    state: str  # reserved, accessed, committed or released
    amount: privacy_pb2.PrivacyLoss  # the reserved (and, once committed, charged) amount
    commits: int = 0


@dataclass
class ReconciliationReport:
    """What reconciliation checked (query ids by how they ended) and every mismatch it found."""

    queries: int  # every query id of the ledger and the archive, known before any is checked
    releases: int = 0
    charged_failures: int = 0
    refunds: int = 0
    in_flight: int = 0
    problems: list[str] = field(default_factory=list)


async def reconcile(admin: Peer, budget: Peer) -> ReconciliationReport:
    """Check every query id of the ledger and the archive against each other (see the module)."""
    known = [
        user.name
        async for user in _pages(admin, "ListUsers", admin_store_pb2.ListUsersRequest(), "users")
    ]
    charges: dict[str, Charge] = {}
    for user in known:
        await _read_ledgers(budget, user, charges)
    outcomes: dict[str, archive_pb2.ArchivedQuery] = {}
    archive = admin_store_pb2.ListArchivedQueriesRequest(page_size=ARCHIVE_PAGE_SIZE)
    async for outcome in _pages(admin, "ListArchivedQueries", archive, "queries"):
        outcome.ClearField("release")  # only its status matters here
        outcomes[outcome.query_id] = outcome
    for user in sorted({o.user for o in outcomes.values()} - set(known)):
        await _read_ledgers(budget, user, charges)

    report = ReconciliationReport(queries=len(charges.keys() | outcomes.keys()))
    for query_id in sorted(charges.keys() | outcomes.keys()):
        charge, outcome = charges.get(query_id), outcomes.get(query_id)
        problem = mismatch(query_id, charge, outcome)
        # A commit entry never goes away: a query charged twice needs no second look.
        if problem is not None and (charge is None or charge.commits < 2):
            charge, outcome = await _read_again(admin, budget, query_id)
            problem = mismatch(query_id, charge, outcome)
        if problem is not None:
            report.problems.append(problem)
        else:
            _count(report, charge, outcome)
    return report


def mismatch(
    query_id: str, charge: Charge | None, outcome: archive_pb2.ArchivedQuery | None
) -> str | None:
    """What is wrong between a query's charge and its archived outcome (None: they agree, or the
    query is still in flight)."""
    where = f"query {query_id}"
    if charge is not None and charge.commits > 1:
        return f"{where}: charged {charge.commits} times in the ledger of {_owner(charge)}"
    if outcome is None:
        if charge is not None and charge.state == "committed":
            return f"{where}: charged in the ledger of {_owner(charge)} but no outcome is archived"
        return None
    released = outcome.status == archive_pb2.QUERY_STATUS_SUCCEEDED
    what = "released" if released else "failed"
    charged = released or not _is_zero(outcome.cost)
    if charge is None:
        if charged:
            return f"{where}: {what} for {outcome.user} on {outcome.dataset} but never charged"
        return None
    if (charge.user, charge.dataset) != (outcome.user, outcome.dataset):
        return (
            f"{where}: archived for {outcome.user} on {outcome.dataset} but charged in the ledger "
            f"of {_owner(charge)}"
        )
    if not charged:
        if charge.state in ("committed", "accessed"):
            return f"{where}: failed and refunded in the archive, but {charge.state} in the ledger"
        return None
    if charge.state == "released":
        return f"{where}: {what} after data access, but its reservation was refunded"
    if charge.state == "reserved":
        return f"{where}: {what}, but its reservation never recorded the data access"
    if not _same_amount(outcome.cost, charge.amount):
        return (
            f"{where}: archived cost {_text(outcome.cost)} but {_text(charge.amount)} held in "
            "the ledger"
        )
    return None


def _count(
    report: ReconciliationReport,
    charge: Charge | None,
    outcome: archive_pb2.ArchivedQuery | None,
) -> None:
    if charge is not None and charge.state in _OPEN:
        report.in_flight += 1
    elif outcome is not None and outcome.status == archive_pb2.QUERY_STATUS_SUCCEEDED:
        report.releases += 1
    elif outcome is not None and not _is_zero(outcome.cost):
        report.charged_failures += 1
    else:
        report.refunds += 1  # released without an outcome, or a failure refunded before access


async def _read_ledgers(budget: Peer, user: str, charges: dict[str, Charge]) -> None:
    """Fold the query entries of every ledger of `user` into `charges`."""
    ledgers = budget_pb2.ListLedgersRequest(user=user, page_size=PAGE_SIZE)
    async for ledger in _pages(budget, "ListLedgers", ledgers, "ledgers"):
        history = budget_pb2.ListLedgerEntriesRequest(
            user=user, dataset=ledger.dataset, page_size=PAGE_SIZE
        )
        async for entry in _pages(budget, "ListLedgerEntries", history, "entries"):
            state = _BY_ENTRY.get(entry.kind)
            if state is None or not entry.query_id:
                continue
            charge = charges.get(entry.query_id)
            if charge is None or entry.kind == _KINDS.LEDGER_ENTRY_KIND_RESERVATION:
                charge = Charge(user, ledger.dataset, state, entry.amount)
                charges[entry.query_id] = charge
            charge.state = state
            if entry.kind == _KINDS.LEDGER_ENTRY_KIND_COMMIT:
                charge.commits += 1


async def _read_again(
    admin: Peer, budget: Peer, query_id: str
) -> tuple[Charge | None, archive_pb2.ArchivedQuery | None]:
    """The query's reservation and archived outcome as they are now."""
    fresh: Charge | None = None
    reservation = await _found(
        budget, "GetReservation", budget_pb2.GetReservationRequest(query_id=query_id)
    )
    if reservation is not None:
        held = reservation.reservation
        state = _STATE_NAMES.get(held.state, "unknown")
        fresh = Charge(held.user, held.dataset, state, held.cost, commits=int(state == "committed"))
    stored = await _found(
        admin, "GetArchivedQuery", admin_store_pb2.GetArchivedQueryRequest(query_id=query_id)
    )
    return fresh, (stored.query if stored is not None else None)


async def _found(peer: Peer, method: str, request: Any) -> Any:
    try:
        return await peer.call(method, request)
    except LomasError as error:
        if error.code is Code.NOT_FOUND:
            return None
        raise


async def _pages(peer: Peer, method: str, request: Any, items: str) -> AsyncIterator[Any]:
    """Every item of a paged list (AIP-158), page after page."""
    while True:
        page = await peer.call(method, request)
        for item in getattr(page, items):
            yield item
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def _owner(charge: Charge) -> str:
    return f"{charge.user} on {charge.dataset}"


def _loss(message: privacy_pb2.PrivacyLoss) -> PrivacyLoss | None:
    try:
        return privacy_loss_from_proto(message, field="cost")
    except LomasError:
        return None


def _is_zero(cost: privacy_pb2.PrivacyLoss) -> bool:
    loss = _loss(cost)
    return loss is not None and not any(loss.components().values())


def _same_amount(archived: privacy_pb2.PrivacyLoss, held: privacy_pb2.PrivacyLoss) -> bool:
    """Whether the archived cost, rounded up as the ledger rounds it, is the amount held; a cost
    the ledger converted to its own unit (another definition) cannot be compared here."""
    cost, amount = _loss(archived), _loss(held)
    if cost is None or amount is None or cost.definition is not amount.definition:
        return True
    return cost.as_cost() == amount


def _text(loss: privacy_pb2.PrivacyLoss) -> str:
    value = _loss(loss)
    if value is None:
        return "(unreadable)"
    return ", ".join(
        f"{name} {format_decimal(amount)}" for name, amount in value.components().items()
    )
