"""The audit trail's background writes of query calls, against a real admin store (SQLite): they
arrive all, in each caller's order, in batches that grow by themselves when calls come together; a
lone event leaves at once; close() sends what is queued; a failed batch is tried once more without
being written twice; a full queue drops events (counted) instead of holding a query back, and one
caller fills only its share of it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc
from lomas.gateway.v1 import gateway_pb2
from lomas_common.peers import AsyncPeer, PeerSettings
from lomas_common.rpc_errors import peer_unavailable
from lomas_common.server import CallOutcome
from lomas_gateway.audit import MAX_BATCH_EVENTS, AuditTrail
from lomas_gateway.auth import Caller, caller_var
from lomas_testing.admin_store import running_admin_store
from lomas_testing.databases import sqlite_url

ESTIMATE = "/lomas.gateway.v1.GatewayService/EstimateQueryCost"
BATCH = "BatchRecordAuditEvents"


@pytest.fixture
def admin_target(tmp_path: Path) -> Iterator[str]:
    """The address of a real admin store (`lomas_admin.main.start`) on a SQLite file."""
    with running_admin_store(sqlite_url(tmp_path / "admin.db")) as target:
        yield target


class CountingAdmin(AsyncPeer[admin_store_pb2_grpc.AdminStoreServiceStub]):
    """The admin store's real client, noting each call's method and number of events. It fails the
    next batches on demand, "before" sending one (nothing written) or "after" it was written (the
    answer lost), and holds calls back while `gate` is closed."""

    def __init__(self, target: str) -> None:
        super().__init__(target, admin_store_pb2_grpc.AdminStoreServiceStub, PeerSettings())
        self.calls: list[tuple[str, int]] = []
        self.failures: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        if method == "ListAuditEvents":
            return await super().call(method, request, timeout=timeout)
        self.calls.append((method, len(request.requests) if method == BATCH else 1))
        await self.gate.wait()
        failure = self.failures.pop(0) if self.failures else ""
        if failure == "before":
            raise peer_unavailable("admin")
        answer = await super().call(method, request, timeout=timeout)
        if failure == "after":
            raise peer_unavailable("admin")
        return answer


def query_call(dataset: str) -> CallOutcome:
    return CallOutcome(ESTIMATE, gateway_pb2.EstimateQueryCostRequest(dataset=dataset), "OK", "")


async def observe_as(trail: AuditTrail, actor: str, dataset: str) -> None:
    caller_var.set(Caller(actor))
    await trail.observe(query_call(dataset))


async def stored(admin: CountingAdmin) -> list[tuple[str, str]]:
    """(actor, dataset) of every stored event, oldest first."""
    events: list[admin_store_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await admin.call(
            "ListAuditEvents",
            admin_store_pb2.ListAuditEventsRequest(page_size=1000, page_token=token),
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            break
    return [(e.actor, json.loads(e.request_json)["dataset"]) for e in reversed(events)]


async def until_stored(admin: CountingAdmin, count: int) -> list[tuple[str, str]]:
    """The stored events once there are `count` of them (the writes run in the background)."""
    for _ in range(500):
        events = await stored(admin)
        if len(events) >= count:
            return events
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} events expected, {len(events)} stored")


def test_concurrent_query_calls_arrive_all_in_order_in_fewer_calls(admin_target: str) -> None:
    callers, per_caller = 8, 50

    async def caller(trail: AuditTrail, name: str) -> None:
        for k in range(per_caller):
            await observe_as(trail, name, f"D{k}")
            await asyncio.sleep(0)  # a real caller's next call comes later

    async def scenario() -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
        admin = CountingAdmin(admin_target)
        try:
            trail = AuditTrail(admin)
            await asyncio.gather(*(caller(trail, f"user{i}") for i in range(callers)))
            await trail.close()
            return admin.calls, await stored(admin)
        finally:
            await admin.close()

    calls, events = asyncio.run(scenario())
    assert {method for method, _ in calls} == {BATCH}
    assert sum(size for _, size in calls) == callers * per_caller
    assert len(calls) < callers * per_caller
    for i in range(callers):
        own = [dataset for actor, dataset in events if actor == f"user{i}"]
        assert own == [f"D{k}" for k in range(per_caller)]


def test_a_lone_event_is_sent_at_once(admin_target: str) -> None:
    async def scenario() -> None:
        admin = CountingAdmin(admin_target)
        try:
            trail = AuditTrail(admin)
            await observe_as(trail, "alice", "D0")
            assert await until_stored(admin, 1) == [("alice", "D0")]
            await observe_as(trail, "alice", "D1")
            assert await until_stored(admin, 2) == [("alice", "D0"), ("alice", "D1")]
            assert admin.calls == [(BATCH, 1), (BATCH, 1)]
            await trail.close()
        finally:
            await admin.close()

    asyncio.run(scenario())


def test_close_sends_everything_queued(admin_target: str) -> None:
    total = 2 * MAX_BATCH_EVENTS + 200

    async def scenario() -> None:
        admin = CountingAdmin(admin_target)
        try:
            trail = AuditTrail(admin, max_queued_per_caller=total)  # one caller's burst
            for k in range(total):  # queued without a pause: the flusher has not run yet
                await observe_as(trail, "alice", f"D{k}")
            await trail.close()
            assert admin.calls == [
                (BATCH, MAX_BATCH_EVENTS),
                (BATCH, MAX_BATCH_EVENTS),
                (BATCH, 200),
            ]
            assert await stored(admin) == [("alice", f"D{k}") for k in range(total)]
        finally:
            await admin.close()

    asyncio.run(scenario())


def test_a_batch_whose_answer_was_lost_is_retried_and_written_once(admin_target: str) -> None:
    async def scenario() -> None:
        admin = CountingAdmin(admin_target)
        try:
            trail = AuditTrail(admin)
            admin.failures = ["after"]  # written, but the gateway hears UNAVAILABLE
            await observe_as(trail, "alice", "D0")
            await observe_as(trail, "alice", "D1")
            await trail.close()
            assert admin.calls == [(BATCH, 2), (BATCH, 2)]
            assert await stored(admin) == [("alice", "D0"), ("alice", "D1")]
        finally:
            await admin.close()

    asyncio.run(scenario())


def test_a_batch_failing_twice_is_logged_and_later_events_still_arrive(
    admin_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        admin = CountingAdmin(admin_target)
        try:
            trail = AuditTrail(admin)
            admin.failures = ["before", "before"]
            await observe_as(trail, "alice", "D0")
            await trail.close()
            await observe_as(trail, "alice", "D1")
            await trail.close()
            assert admin.calls == [(BATCH, 1), (BATCH, 1), (BATCH, 1)]
            assert await stored(admin) == [("alice", "D1")]
        finally:
            await admin.close()

    with caplog.at_level(logging.WARNING, logger="lomas_gateway.audit"):
        asyncio.run(scenario())
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.ERROR]
    assert "1 audit events lost" in caplog.records[1].getMessage()


def test_a_full_queue_drops_and_counts_events_without_holding_queries(
    admin_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> AuditTrail:
        admin = CountingAdmin(admin_target)
        try:
            trail = AuditTrail(admin, max_queued_events=10)
            admin.gate.clear()  # the admin store stalls
            await observe_as(trail, "alice", "D0")
            while not admin.calls:  # the flusher took D0 and waits on the admin store
                await asyncio.sleep(0)
            for k in range(1, 16):
                # A query's observer never waits for the admin store, full queue or not.
                await asyncio.wait_for(observe_as(trail, "alice" if k < 14 else "bob", f"D{k}"), 1)
            admin.gate.set()
            await trail.close()
            assert await stored(admin) == [("alice", f"D{k}") for k in range(11)]
            return trail
        finally:
            await admin.close()

    with caplog.at_level(logging.ERROR, logger="lomas_gateway.audit"):
        trail = asyncio.run(scenario())
    assert trail.dropped_events == {"alice": 3, "bob": 2}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("audit queue full (10 events)")
    assert messages[1] == "audit queue has room again: 5 query-call events were dropped"


def test_one_callers_flood_fills_only_its_share_of_the_queue(
    admin_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While the admin store stalls, a caller beyond its share of the queue loses its own events
    (counted, logged once, and once more when it has room again); another caller's still queue."""

    async def scenario() -> AuditTrail:
        admin = CountingAdmin(admin_target)
        try:
            trail = AuditTrail(admin, max_queued_events=10, max_queued_per_caller=4)
            admin.gate.clear()
            await observe_as(trail, "alice", "D0")
            while not admin.calls:  # the flusher took D0 and waits on the admin store
                await asyncio.sleep(0)
            for k in range(1, 9):
                await asyncio.wait_for(observe_as(trail, "alice", f"D{k}"), 1)
            for k in range(1, 4):
                await observe_as(trail, "bob", f"B{k}")
            admin.gate.set()
            await trail.close()
            assert await stored(admin) == [
                *[("alice", f"D{k}") for k in range(5)],
                *[("bob", f"B{k}") for k in range(1, 4)],
            ]
            return trail
        finally:
            await admin.close()

    with caplog.at_level(logging.ERROR, logger="lomas_gateway.audit"):
        trail = asyncio.run(scenario())
    assert trail.dropped_events == {"alice": 4}
    assert [r.getMessage() for r in caplog.records] == [
        "caller 'alice' holds 4 queued audit events, its share: its query-call events are dropped"
        " until the admin store catches up",
        "caller 'alice' has room again: 4 of its query-call events were dropped",
    ]
