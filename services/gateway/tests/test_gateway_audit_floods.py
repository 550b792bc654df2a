"""A flood of calls refused by the per-user limits is counted, not written to the audit trail one
event at a time (each write would cost the admin store a transaction that other users wait behind)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from lomas.admin.v1 import admin_store_pb2_grpc
from lomas.gateway.v1 import gateway_pb2
from lomas_common.peers import AsyncPeer
from lomas_common.server import CallOutcome
from lomas_gateway.audit import AuditTrail


class RecordingAdmin:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def call(self, method: str, request: Any) -> None:
        events = [one.event for one in request.requests] if method.startswith("Batch") else []
        self.calls.append((method, [event.reason for event in events]))


def test_limit_refusals_are_counted_and_other_calls_recorded() -> None:
    admin = RecordingAdmin()
    trail = AuditTrail(cast(AsyncPeer[admin_store_pb2_grpc.AdminStoreServiceStub], admin))
    request = gateway_pb2.EstimateQueryCostRequest(dataset="PENGUIN")
    method = "/lomas.gateway.v1.GatewayService/EstimateQueryCost"

    async def scenario() -> None:
        for reason in ("RATE_LIMITED", "TOO_MANY_CONCURRENT_CALLS", "TOO_MANY_CONCURRENT_QUERIES"):
            await trail.observe(CallOutcome(method, request, "RESOURCE_EXHAUSTED", reason))
        await trail.observe(CallOutcome(method, request, "INVALID_ARGUMENT", "QUERY_INVALID"))
        await trail.observe(CallOutcome(method, request, "OK", ""))
        await asyncio.sleep(0)  # the background writes run
        await trail.close()

    asyncio.run(scenario())
    assert admin.calls == [("BatchRecordAuditEvents", ["QUERY_INVALID", ""])]
    assert sum(trail.refused_by_limits.values()) == 3
