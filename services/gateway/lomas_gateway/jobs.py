"""Long queries as jobs: submit now, watch the steps, collect the release, or cancel.

A submitted query goes through the same lifecycle as `ExecuteQuery` (`QueryLifecycle.start`: every
refusal that needs no data is raised before the submit answers); the gateway then finishes it in the
background, holding the caller's query slot. Where a query stands is read from the truth, never from
this process's memory, so any gateway replica can answer a watch or a cancel:
- the archive: its outcome (done, or failed with its reason);
- else the ledger's reservation: RESERVED is queued (with the task's place in its queue), ACCESSED or
  COMMITTED is running (a worker touched the data), RELEASED is cancelled (nothing ran).

Ownership is checked on every call: another user's query id is NOT_FOUND, exactly like an unknown
one, so an id reveals nothing about whether it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC

from lomas.budget.v1 import budget_pb2
from lomas.common.v1 import archive_pb2, privacy_pb2
from lomas.gateway.v1 import gateway_pb2
from lomas_common.convert import now_timestamp, same_named, zero_cost
from lomas_common.errors import (
    Code,
    FailedPrecondition,
    LomasError,
    NotFound,
    QueryCancelled,
    QueryTimeout,
)
from lomas_common.queue import WorkloadClass
from lomas_common.rpc_errors import RemoteError
from lomas_gateway.completion import CompletionWaiter
from lomas_gateway.lifecycle import Peers, QueryLifecycle, StartedQuery
from lomas_gateway.limits import ResponsePadding
from lomas_gateway.lost_tasks import LostTaskFinder
from lomas_gateway.outcomes import QueryOutcome, stored_answer
from lomas_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# How often a watch looks again when no completion is announced (queue place, running).
WATCH_POLL_SECONDS = 0.5
CANCELLED = "QUERY_CANCELLED"


def query_not_found(query_id: str) -> NotFound:
    # The same answer for an unknown id and another user's: nothing about its existence leaks.
    return NotFound(
        "no query of yours has this id", reason="QUERY_NOT_FOUND", metadata={"queryId": query_id}
    )


@dataclass(frozen=True)
class QueryStep:
    """Where a query stands, as a watch reports it."""

    state: gateway_pb2.QueryState.ValueType
    queue_position: int = 0
    outcome: QueryOutcome | None = None

    def event(self, query_id: str) -> gateway_pb2.WatchQueryResponse:
        event = gateway_pb2.WatchQueryResponse(
            query_id=query_id,
            state=self.state,
            queue_position=self.queue_position,
            event_time=now_timestamp(),
        )
        if self.outcome is not None:
            event.result.CopyFrom(release_response(self.outcome))
        return event


def release_response(outcome: QueryOutcome) -> gateway_pb2.ExecuteQueryResponse:
    """The ExecuteQuery answer that carries `outcome` (its fields are the answer's)."""
    fields = same_named(outcome, "query_id", "release", "cost", "dummy", "replay")
    return gateway_pb2.ExecuteQueryResponse(**fields)


class QueryJobs:
    """Submit, watch and cancel, for every caller of one gateway process."""

    def __init__(
        self,
        settings: GatewaySettings,
        lifecycle: QueryLifecycle,
        peers: Peers,
        waiter: CompletionWaiter,
        queues: LostTaskFinder,
    ) -> None:
        self._settings = settings
        self._lifecycle = lifecycle
        self._peers = peers
        self._waiter = waiter
        self._queues = queues
        self._running: set[asyncio.Task[None]] = set()
        self._padding = ResponsePadding(
            settings.limits.response_min_seconds, settings.limits.response_quantum_seconds
        )

    def finish_in_background(self, started: StartedQuery, holding: AsyncExitStack) -> None:
        """Finish a started query without a caller waiting; `holding` (the caller's query slot) is
        closed when it ends. Its outcome is in the archive for whoever watches."""

        async def finish() -> None:
            async with holding:
                try:
                    await self._lifecycle.finish(started)
                except LomasError as error:  # stored with the query: the watcher reads it there
                    log.info("submitted query %s ended: %s", started.query_id, error.reason)

        job = asyncio.create_task(finish())
        self._running.add(job)
        job.add_done_callback(self._running.discard)

    async def watch(
        self, subject: str, query_id: str
    ) -> AsyncIterator[gateway_pb2.WatchQueryResponse]:
        """An event now and at each change of state or queue place, ending with the release; a
        failed query raises its error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.query_timeout_seconds
        last: tuple[int, int] | None = None
        while True:
            self._waiter.expect(query_id)
            try:
                step = await self._step(subject, query_id)
            except BaseException:
                self._waiter.forget(query_id)
                raise
            if (step.state, step.queue_position) != last:
                last = (step.state, step.queue_position)
                yield step.event(query_id)
            if step.state == gateway_pb2.QUERY_STATE_DONE:
                self._waiter.forget(query_id)
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._waiter.forget(query_id)
                raise QueryTimeout(
                    "the query did not finish in time; watch it again to follow it",
                    metadata={"queryId": query_id},
                )
            # Wakes at the worker's announcement, else after one poll interval (`wait` ends the
            # registration either way).
            await self._waiter.wait(query_id, min(WATCH_POLL_SECONDS, remaining), _not_yet)

    async def cancel(self, subject: str, query_id: str) -> privacy_pb2.PrivacyLoss:
        """Return the reservation of a query that has not touched the data; the refunded cost."""
        reservation = await self._reservation(subject, query_id)
        try:
            released: budget_pb2.ReleaseReservationResponse = await self._peers.budget.call(
                "ReleaseReservation",
                budget_pb2.ReleaseReservationRequest(
                    query_id=query_id, actor=subject, reason=CANCELLED
                ),
            )
        except RemoteError as error:
            if error.reason != "DATA_ACCESSED":
                raise
            raise FailedPrecondition(
                "a worker already touched the data: the query runs to its end and its charge "
                "stands (there is no refund after data access)",
                reason="DATA_ACCESSED",
                metadata={"queryId": query_id},
            ) from None
        with contextlib.suppress(Exception):  # a task left behind is dropped by its worker
            await self._queues.remove(query_id, self._all_queues())
        # Wake whoever waits for it, on every gateway replica: the outcome is the cancellation.
        await self._announce_cancelled(reservation)
        return released.reservation.cost

    async def _step(self, subject: str, query_id: str) -> QueryStep:
        stored = await self._lifecycle.stored_outcome(query_id)
        if stored is not None:
            if stored.user != subject:
                raise query_not_found(query_id)
            return await self._done(stored)
        reservation = await self._reservation(subject, query_id)
        state = reservation.state
        if state == budget_pb2.RESERVATION_STATE_RESERVED:
            place = await self._queues.position(query_id, self._all_queues())
            return QueryStep(gateway_pb2.QUERY_STATE_QUEUED, queue_position=place)
        if state == budget_pb2.RESERVATION_STATE_RELEASED:
            # A worker that refunds a refused query stores its failure right after the release:
            # look once more before calling it cancelled.
            await asyncio.sleep(WATCH_POLL_SECONDS)
            stored = await self._lifecycle.stored_outcome(query_id)
            if stored is not None:
                return await self._done(stored)
            raise QueryCancelled(
                "the query was cancelled before it touched the data; its reservation was "
                "returned and nothing was released",
                metadata={"queryId": query_id},
            )
        return QueryStep(gateway_pb2.QUERY_STATE_RUNNING)

    async def _done(self, stored: archive_pb2.ArchivedQuery) -> QueryStep:
        """The outcome, answer or stored failure, padded like `ExecuteQuery`'s from the moment the
        gateway accepted the query: when a watch sees it says no more than a synchronous answer."""
        await self._padding.hold(
            time.time() - stored.submit_time.ToDatetime(tzinfo=UTC).timestamp()
        )
        return QueryStep(gateway_pb2.QUERY_STATE_DONE, outcome=stored_answer(stored))

    async def _reservation(self, subject: str, query_id: str) -> budget_pb2.Reservation:
        if not query_id:
            raise query_not_found(query_id)
        try:
            found: budget_pb2.GetReservationResponse = await self._peers.budget.call(
                "GetReservation", budget_pb2.GetReservationRequest(query_id=query_id)
            )
        except RemoteError as error:
            if error.code is Code.NOT_FOUND:
                raise query_not_found(query_id) from None
            raise
        if found.reservation.user != subject:
            raise query_not_found(query_id)
        return found.reservation

    def _all_queues(self) -> list[str]:
        return self._settings.queue.queues(WorkloadClass)

    async def _announce_cancelled(self, reservation: budget_pb2.Reservation) -> None:
        outcome = archive_pb2.ArchivedQuery(
            query_id=reservation.query_id,
            user=reservation.user,
            dataset=reservation.dataset,
            cost=zero_cost(reservation.cost),
            status=archive_pb2.QUERY_STATUS_FAILED,
            error_reason=CANCELLED,
            error_message="the query was cancelled before it touched the data; its reservation "
            "was returned",
        )
        with contextlib.suppress(Exception):  # a waiter that misses it times out, nothing worse
            await self._waiter.announce(reservation.query_id, outcome.SerializeToString())

    async def close(self) -> None:
        for job in list(self._running):
            job.cancel()
        for job in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await job


async def _not_yet() -> bool:
    return False
