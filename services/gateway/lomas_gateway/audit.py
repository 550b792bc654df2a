"""The audit trail: every admin action and every query call, with the caller's verified subject.

Admin actions are recorded before the caller gets the answer (a refused one right after it: the
refusal's status reaches the caller first; an admin action that cannot be audited is logged loudly).
Researcher query calls are recorded in the background so they add no latency: their events join a
queue that one flusher task drains, sending everything queued so far (up to MAX_BATCH_EVENTS) in one
BatchRecordAuditEvents call, then looking again. There is no timer: a lone event leaves at once, and
batches grow by themselves while a call is in flight, so under load the admin store spends one call
and one transaction on many events. One flusher sending in queue order keeps each caller's events in
order. The queue is bounded: when the admin store cannot keep up, further events are dropped,
counted in `dropped_events` and logged, and never hold a query back. Each caller may hold only a
share of it (`MAX_QUEUED_EVENTS_PER_CALLER`): one caller flooding free calls drops its own events
once its share is full, not everyone else's.
Real queries are also in the query archive, with their release.

Calls refused by a per-user limit (rate, concurrency) reached no service and are not recorded one by
one: a flood of them would otherwise turn into a flood of audit writes that slows every other user's
queries (the refusal is in the gateway's log). Their count per caller is kept in `refused_by_limits`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections import Counter, deque

from google.protobuf import json_format

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc
from lomas_common.convert import now_timestamp
from lomas_common.errors import LomasError
from lomas_common.peers import AsyncPeer
from lomas_common.server import CallOutcome
from lomas_gateway.auth import caller_var

log = logging.getLogger(__name__)

MAX_REQUEST_JSON_CHARS = 8192
# The admin store's limit on one BatchRecordAuditEvents call.
MAX_BATCH_EVENTS = 500
# Query-call events waiting for the admin store (a few MB): beyond it they are dropped, never waited
# for, so a slow or absent admin store cannot slow queries or fill the gateway's memory.
MAX_QUEUED_EVENTS = 10_000
# One caller's share of that queue: a tenth, so that it takes ten flooding callers, not one, to
# crowd out the events of everyone else.
MAX_QUEUED_EVENTS_PER_CALLER = 1_000
# A failed batch is tried once more after the peer's retry advice, at most this long: meanwhile new
# events queue up behind it.
MAX_RETRY_PAUSE_SECONDS = 1.0
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
    def __init__(
        self,
        admin: AsyncPeer[admin_store_pb2_grpc.AdminStoreServiceStub],
        *,
        max_queued_events: int = MAX_QUEUED_EVENTS,
        max_queued_per_caller: int = MAX_QUEUED_EVENTS_PER_CALLER,
    ) -> None:
        self._admin = admin
        self._max_queued = max_queued_events
        self._max_per_caller = max_queued_per_caller
        self._queue: deque[admin_store_pb2.AuditEvent] = deque()
        self._queued_by: Counter[str] = Counter()  # events in the queue, per caller
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        # Events dropped since the queue last had room (0: it has room), and per caller since its
        # share last had room.
        self._dropped_since_room = 0
        self._dropped_over_share: Counter[str] = Counter()
        self.refused_by_limits: Counter[str] = Counter()
        self.dropped_events: Counter[str] = Counter()

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
        if is_admin:
            request = admin_store_pb2.RecordAuditEventRequest(event=event)
            await self._admin.call("RecordAuditEvent", request)
            return
        self._enqueue(event)

    def _enqueue(self, event: admin_store_pb2.AuditEvent) -> None:
        if self._queued_by[event.actor] >= self._max_per_caller:
            self.dropped_events[event.actor] += 1
            if not self._dropped_over_share[event.actor]:
                log.error(
                    "caller %r holds %d queued audit events, its share: its query-call events are"
                    " dropped until the admin store catches up",
                    event.actor,
                    self._max_per_caller,
                )
            self._dropped_over_share[event.actor] += 1
            return
        if len(self._queue) >= self._max_queued:
            self.dropped_events[event.actor] += 1
            if not self._dropped_since_room:
                log.error(
                    "audit queue full (%d events): query-call events are dropped until the admin"
                    " store catches up",
                    len(self._queue),
                )
            self._dropped_since_room += 1
            return
        self._queue.append(event)
        self._queued_by[event.actor] += 1
        self._wake.set()
        if self._flusher is None or self._flusher.done():
            # A context of its own: the flusher works for every caller, not for the one whose
            # event happened to start it (its subject and request id must not label the batches).
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())

    async def _flush(self) -> None:
        """Send what is queued, batch after batch, until closed with an empty queue."""
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH_EVENTS))]
            self._taken(batch)
            await self._send(batch)
            # Half empty, not merely below the bound: under steady overload the queue hovers at
            # the bound, and this line would otherwise alternate with the one above on every batch.
            if self._dropped_since_room and len(self._queue) <= self._max_queued // 2:
                log.error(
                    "audit queue has room again: %d query-call events were dropped",
                    self._dropped_since_room,
                )
                self._dropped_since_room = 0

    def _taken(self, batch: list[admin_store_pb2.AuditEvent]) -> None:
        """Give the callers of `batch` their share back (the events left the queue). A caller who
        lost events hears of it again once none of its events waits, not merely below its share:
        a caller flooding at its share would otherwise alternate the two lines on every batch."""
        for event in batch:
            self._queued_by[event.actor] -= 1
            if self._queued_by[event.actor] > 0:
                continue
            del self._queued_by[event.actor]
            dropped = self._dropped_over_share.pop(event.actor, 0)
            if dropped:
                log.error(
                    "caller %r has room again: %d of its query-call events were dropped",
                    event.actor,
                    dropped,
                )

    async def _send(self, batch: list[admin_store_pb2.AuditEvent]) -> None:
        """One BatchRecordAuditEvents call, tried twice. The batch's request id makes the second
        try append nothing if the first was written but its answer lost (a timeout, say)."""
        request = admin_store_pb2.BatchRecordAuditEventsRequest(
            requests=[admin_store_pb2.RecordAuditEventRequest(event=event) for event in batch],
            request_id=uuid.uuid4().hex,
        )
        try:
            await self._admin.call("BatchRecordAuditEvents", request)
            return
        except Exception as error:  # whatever it was, the flusher lives on for the next events
            # No pause once closing: shutdown should not wait on a peer that is gone.
            pause = 0.0 if self._closing else min(_retry_after(error), MAX_RETRY_PAUSE_SECONDS)
            log.warning(
                "audit batch of %d events failed (%s); retrying in %.1f s", len(batch), error, pause
            )
        await asyncio.sleep(pause)
        try:
            await self._admin.call("BatchRecordAuditEvents", request)
        except Exception as error:
            log.error("%d audit events lost: %s", len(batch), error)

    async def close(self) -> None:
        """Send what is queued, then stop the flusher."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher


def _retry_after(error: Exception) -> float:
    if isinstance(error, LomasError) and error.retry_after_seconds is not None:
        return error.retry_after_seconds
    return 0.0
