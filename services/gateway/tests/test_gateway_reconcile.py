"""Reconciliation of the ledger with the archive (`reconcile.py`) and VerifyLedgers, which runs it
after the ledger's own verification, against in-memory fakes of the admin store and the ledger.

The same checks run end to end on real services in tests/e2e/test_reconciliation.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from lomas.admin.v1 import admin_store_pb2, resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.common.v1 import archive_pb2, privacy_pb2
from lomas.gateway.v1 import admin_pb2
from lomas_common.errors import NotFound
from lomas_gateway.administration import Administration
from lomas_gateway.reconcile import ReconciliationReport, reconcile

K = budget_pb2.LedgerEntryKind
S = budget_pb2.ReservationState
Kind: TypeAlias = budget_pb2.LedgerEntryKind.ValueType
State: TypeAlias = budget_pb2.ReservationState.ValueType
PAGE = 2  # the fakes answer in pages of two, whatever the page size asked


def approx(epsilon: str, delta: str = "0") -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(approx_dp=privacy_pb2.ApproxDp(epsilon=epsilon, delta=delta))


def page(items: list[Any], token: str) -> tuple[list[Any], str]:
    start = int(token or 0)
    rest = start + PAGE
    return items[start:rest], (str(rest) if rest < len(items) else "")


@dataclass
class Platform:
    """What the ledger and the archive hold, and how the two fakes answer from it."""

    users: list[str] = field(default_factory=list)
    entries: dict[tuple[str, str], list[budget_pb2.LedgerEntry]] = field(default_factory=dict)
    archive: list[archive_pb2.ArchivedQuery] = field(default_factory=list)
    # Outcomes stored after the archive was listed (a worker finishing meanwhile).
    stored_later: list[archive_pb2.ArchivedQuery] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the ledger's own verification

    def entry(self, user: str, kind: Kind, query_id: str, epsilon: str = "1") -> None:
        ledger = self.entries.setdefault((user, "PENGUIN"), [])
        ledger.append(budget_pb2.LedgerEntry(kind=kind, query_id=query_id, amount=approx(epsilon)))

    def run(self, user: str, query_id: str, *kinds: Kind, epsilon: str = "1") -> None:
        for kind in (K.LEDGER_ENTRY_KIND_RESERVATION, *kinds):
            self.entry(user, kind, query_id, epsilon)

    def outcome(
        self, user: str, query_id: str, *, ok: bool = True, cost: str = "1", later: bool = False
    ) -> None:
        status = archive_pb2.QUERY_STATUS_SUCCEEDED if ok else archive_pb2.QUERY_STATUS_FAILED
        stored = archive_pb2.ArchivedQuery(
            query_id=query_id,
            user=user,
            dataset="PENGUIN",
            cost=approx(cost),
            status=status,
            release=b"arrow" if ok else b"",
        )
        (self.stored_later if later else self.archive).append(stored)

    def state(self, query_id: str) -> tuple[str, str, State, privacy_pb2.PrivacyLoss] | None:
        found = None
        for (user, dataset), entries in self.entries.items():
            for entry in entries:
                if entry.query_id != query_id:
                    continue
                if entry.kind == K.LEDGER_ENTRY_KIND_RESERVATION:
                    found = (user, dataset, S.RESERVATION_STATE_RESERVED, entry.amount)
                elif found is not None:
                    state = {
                        K.LEDGER_ENTRY_KIND_ACCESS: S.RESERVATION_STATE_ACCESSED,
                        K.LEDGER_ENTRY_KIND_COMMIT: S.RESERVATION_STATE_COMMITTED,
                        K.LEDGER_ENTRY_KIND_RELEASE: S.RESERVATION_STATE_RELEASED,
                    }[entry.kind]
                    found = (found[0], found[1], state, found[3])
        return found


class FakeAdmin:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        p = self.platform
        if method == "ListUsers":
            users, token = page(p.users, request.page_token)
            return admin_store_pb2.ListUsersResponse(
                users=[resources_pb2.User(name=n) for n in users], next_page_token=token
            )
        if method == "ListArchivedQueries":
            queries, token = page(p.archive, request.page_token)
            return admin_store_pb2.ListArchivedQueriesResponse(
                queries=queries, next_page_token=token
            )
        if method == "GetArchivedQuery":
            for stored in p.archive + p.stored_later:
                if stored.query_id == request.query_id:
                    return admin_store_pb2.GetArchivedQueryResponse(query=stored)
            raise NotFound("no such archived query", reason="QUERY_NOT_FOUND")
        raise AssertionError(f"unexpected call admin.{method}")


class FakeLedger:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        p = self.platform
        if method == "ListLedgers":
            datasets = sorted(d for u, d in p.entries if u == request.user)
            names, token = page(datasets, request.page_token)
            return budget_pb2.ListLedgersResponse(
                ledgers=[budget_pb2.Ledger(user=request.user, dataset=d) for d in names],
                next_page_token=token,
            )
        if method == "ListLedgerEntries":
            entries, token = page(p.entries[(request.user, request.dataset)], request.page_token)
            return budget_pb2.ListLedgerEntriesResponse(entries=entries, next_page_token=token)
        if method == "GetReservation":
            state = p.state(request.query_id)
            if state is None:
                raise NotFound("no such reservation", reason="RESERVATION_NOT_FOUND")
            user, dataset, value, cost = state
            return budget_pb2.GetReservationResponse(
                reservation=budget_pb2.Reservation(
                    query_id=request.query_id, user=user, dataset=dataset, state=value, cost=cost
                )
            )
        if method == "VerifyLedgers":
            return budget_pb2.VerifyLedgersResponse(
                ledgers_checked=len(p.entries), entries_checked=7, problems=p.problems
            )
        raise AssertionError(f"unexpected call budget.{method}")


def reconciled(platform: Platform) -> ReconciliationReport:
    return asyncio.run(reconcile(FakeAdmin(platform), FakeLedger(platform)))


ACCESS, COMMIT, RELEASE = (
    K.LEDGER_ENTRY_KIND_ACCESS,
    K.LEDGER_ENTRY_KIND_COMMIT,
    K.LEDGER_ENTRY_KIND_RELEASE,
)


def consistent_platform() -> Platform:
    """Every way a query can end, consistently, over two users and pages of two."""
    p = Platform(users=["ann", "bob"])
    p.run("ann", "released", ACCESS, COMMIT)
    p.outcome("ann", "released")
    p.run("ann", "failed-after-access", ACCESS, COMMIT, epsilon="2")
    p.outcome("ann", "failed-after-access", ok=False, cost="2")
    p.run("bob", "refunded", RELEASE)
    p.outcome("bob", "refunded", ok=False, cost="0")
    p.run("bob", "cancelled", RELEASE)  # cancellations are not archived
    p.run("bob", "waiting")
    p.run("bob", "running", ACCESS)
    p.run("bob", "committing", ACCESS)  # its outcome is stored, its commit not yet
    p.outcome("bob", "committing")
    return p


def test_every_way_a_query_ends_reconciles() -> None:
    report = reconciled(consistent_platform())
    assert report.problems == []
    assert (report.queries, report.releases, report.charged_failures) == (7, 1, 1)
    assert (report.refunds, report.in_flight) == (2, 3)


def test_mismatches_are_reported_with_their_query_ids() -> None:
    p = consistent_platform()
    p.run("ann", "no-outcome", ACCESS, COMMIT)
    p.outcome("ann", "never-charged")
    p.run("ann", "refunded-release", RELEASE)
    p.outcome("ann", "refunded-release")
    p.run("bob", "charged-refund", ACCESS, COMMIT)
    p.outcome("bob", "charged-refund", ok=False, cost="0")
    p.run("bob", "twice", ACCESS, COMMIT, COMMIT)
    p.outcome("bob", "twice")
    p.run("bob", "cheaper", ACCESS, COMMIT, epsilon="0.5")
    p.outcome("bob", "cheaper", cost="1")
    p.run("bob", "not-accessed")
    p.outcome("bob", "not-accessed", ok=False, cost="1")
    p.run("bob", "elsewhere", ACCESS, COMMIT)
    p.outcome("ann", "elsewhere")
    assert reconciled(p).problems == [
        "query charged-refund: failed and refunded in the archive, but committed in the ledger",
        "query cheaper: archived cost epsilon 1, delta 0 but epsilon 0.5, delta 0 held in the "
        "ledger",
        "query elsewhere: archived for ann on PENGUIN but charged in the ledger of bob on PENGUIN",
        "query never-charged: released for ann on PENGUIN but never charged",
        "query no-outcome: charged in the ledger of ann on PENGUIN but no outcome is archived",
        "query not-accessed: failed, but its reservation never recorded the data access",
        "query refunded-release: released after data access, but its reservation was refunded",
        "query twice: charged 2 times in the ledger of bob on PENGUIN",
    ]


def test_an_outcome_stored_while_reconciling_is_no_mismatch() -> None:
    p = consistent_platform()
    p.run("ann", "just-finished", ACCESS, COMMIT)
    p.outcome("ann", "just-finished", later=True)  # absent from the listing, there when read again
    report = reconciled(p)
    assert report.problems == [] and report.releases == 2


def test_the_ledgers_of_a_deleted_user_are_read_through_the_archive() -> None:
    p = consistent_platform()
    p.run("gone", "left-behind", ACCESS, COMMIT)
    p.outcome("gone", "left-behind")
    p.run("gone", "forgotten", ACCESS, COMMIT)
    assert "gone" not in p.users
    assert reconciled(p).problems == [
        "query forgotten: charged in the ledger of gone on PENGUIN but no outcome is archived"
    ]


def test_verify_ledgers_reports_the_ledgers_problems_then_the_mismatches() -> None:
    p = consistent_platform()
    p.problems = ["ledger l1: entry 3: hash mismatch (entry altered)"]
    p.run("ann", "no-outcome", ACCESS, COMMIT)
    administration = Administration(FakeAdmin(p), FakeLedger(p), FakeAdmin(p))
    response = asyncio.run(administration.verify_ledgers(admin_pb2.VerifyLedgersRequest()))
    assert (response.ledgers_checked, response.entries_checked) == (2, 7)
    assert list(response.problems) == [
        "ledger l1: entry 3: hash mismatch (entry altered)",
        "query no-outcome: charged in the ledger of ann on PENGUIN but no outcome is archived",
    ]
