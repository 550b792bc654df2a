"""The audit trail: every admin action and every query call, with the caller's verified subject.

Admin actions are recorded before the caller gets the answer (a refused one right after it: the
refusal's status reaches the caller first; an admin action that cannot be audited is logged loudly); researcher query calls are recorded in the background so they add no latency.
Real queries are also in the query archive, with their release.

Calls refused by a per-user limit (rate, concurrency) reached no service and are not recorded one by
one: a flood of them would otherwise turn into a flood of audit writes that slows every other user's
queries (the refusal is in the gateway's log). Their count per caller is kept in `refused_by_limits`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from google.protobuf import json_format

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc
from lomas_common.convert import now_timestamp
from lomas_common.peers import AsyncPeer
from lomas_common.server import CallOutcome
from lomas_gateway.auth import caller_var

log = logging.getLogger(__name__)

MAX_REQUEST_JSON_CHARS = 8192
_QUERY_CALLS = {
    "/lomas.gateway.v1.GatewayService/ExecuteQuery",
    "/lomas.gateway.v1.GatewayService/EstimateQueryCost",
    "/lomas.gateway.v1.GatewayService/GetDummyDataset",
}
_ADMIN_PREFIX = "/lomas.gateway.v1.AdminService/"
# Refusals by the per-user limits: counted, not written (see the module docstring).
_LIMIT_REASONS = frozenset(
    {"RATE_LIMITED", "TOO_MANY_CONCURRENT_QUERIES", "TOO_MANY_CONCURRENT_CALLS"}
)


class AuditTrail:
    def __init__(self, admin: AsyncPeer[admin_store_pb2_grpc.AdminStoreServiceStub]) -> None:
        self._admin = admin
        self._background: set[asyncio.Task[None]] = set()
        self.refused_by_limits: Counter[str] = Counter()

    async def observe(self, outcome: CallOutcome) -> None:
        is_admin = outcome.method.startswith(_ADMIN_PREFIX)
        if not is_admin and outcome.method not in _QUERY_CALLS:
            return
        caller = caller_var.get()
        if not is_admin and outcome.reason in _LIMIT_REASONS:
            self.refused_by_limits[caller.subject if caller else ""] += 1
            return
        request_json = json_format.MessageToJson(outcome.request, indent=None)
        if len(request_json) > MAX_REQUEST_JSON_CHARS:
            request_json = request_json[:MAX_REQUEST_JSON_CHARS] + "…"
        event = admin_store_pb2.AuditEvent(
            time=now_timestamp(),
            actor=caller.subject if caller else "",
            method=outcome.method,
            request_json=request_json,
            code=outcome.code,
            reason=outcome.reason,
        )
        request = admin_store_pb2.RecordAuditEventRequest(event=event)
        if is_admin:
            await self._admin.call("RecordAuditEvent", request)
            return
        task = asyncio.create_task(self._admin.call("RecordAuditEvent", request))
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("audit event lost: %s", task.exception())

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
