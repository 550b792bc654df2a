"""The query lifecycle of DESIGN.md, run by the gateway for one verified caller.

The grant check (permission before existence) is `authorize`, called by the servicer before
anything else. `QueryLifecycle.start` and `finish` then take a real query through named steps:

1. the price: an executor prices the query on the metadata alone (no data) and returns its
   canonical form, over which the fingerprint is taken (`pricing.py`); then `_look_back`: a retry
   gets the first answer of its request id, a query the caller already had released gets a free
   replay (from the releases this gateway knows when the request id is new, `releases.py`); an
   identical query already in flight is waited for, and its release is the answer
   (`_follow_identical`: single flight across replicas, `claims.QueryFlights`);
2. `_reserve`: the ledger holds the cost atomically, keyed by the query id (no reservation, no run);
3. `_dispatch`: a Celery task carries the query to a worker, which stores the outcome before the
   task is acknowledged;
4. `_await_completion`: the gateway waits for the worker to announce the outcome;
5. `_outcome_of`: the stored outcome is the answer.

Reads before the reservation: the admin store answers `authorize` (kept until an administrator
writes, `access.py`) and the look back (one call that reads the request id's stored outcome and the
earlier release together; none for a new request id whose release this gateway knows, or a new
`fresh` one); the user's may-query flag and the dataset's descriptor come with the grant, so
nothing else is read. A query that leads its flight looks back once more (see
`_follow_identical`).

Completion: the normal road is the worker's announcement on Redis pub/sub, which carries the
outcome itself when it is small, so the gateway answers without another read. Two fallbacks exist
because that road can fail without anyone noticing, and each runs only once per poll interval
without an announcement (`completion.POLL_INTERVAL_SECONDS`):
- the archive poll: pub/sub delivers at most once and only to connected subscribers, so an
  announcement sent while the gateway's subscription reconnects is lost; the archive is the truth,
  and reading it bounds the cost of a lost announcement to one interval;
- the lost-task re-send: Redis can lose a task between a dying worker's BRPOP and its record of the
  held task (`lost_tasks.py`); a task the queue no longer knows is sent again under the same id,
  which is safe because tasks are idempotent on the query id.

This module orchestrates peers, so it speaks their protobuf messages; the rules it applies
(ledger arithmetic, query semantics) live in the peers' domain code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from celery import Celery
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc
from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas.common.v1 import archive_pb2, dataset_pb2, privacy_pb2, query_pb2
from lomas.executor.v1 import executor_pb2, executor_pb2_grpc, task_pb2
from lomas.gateway.v1 import gateway_pb2
from lomas_common import metrics
from lomas_common.convert import now_timestamp
from lomas_common.errors import (
    BackendUnavailable,
    Code,
    DatasetAccessDenied,
    FailedPrecondition,
    InvalidArgument,
    InvalidQuery,
    LomasError,
    PermissionDenied,
    QueryTimeout,
)
from lomas_common.peers import AsyncPeer
from lomas_common.queue import EXECUTE_QUERY_TASK
from lomas_common.rpc_errors import RemoteError
from lomas_common.telemetry import publishing
from lomas_gateway.access import AccessCache
from lomas_gateway.claims import LANDED, QueryFlights, RequestClaims, request_id_reused
from lomas_gateway.completion import Completion, CompletionWaiter
from lomas_gateway.lost_tasks import LostTaskFinder
from lomas_gateway.outcomes import (
    QueryOutcome,
    RemoteErrorFromArchive,
    known_release,
    replay_of,
    stored_answer,
)
from lomas_gateway.pricing import Pricer, query_fingerprint
from lomas_gateway.releases import KnownRelease, KnownReleases
from lomas_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# Query ids derived from (subject, request id) so a retry maps to the same reservation and release.
_QUERY_ID_NAMESPACE = uuid.UUID("5b0e6c53-7f8e-4d55-9a3b-2f0a5a1d6c11")
DEFAULT_DUMMY_ROWS = 100


@dataclass(frozen=True)
class StartedQuery:
    """A real query after `QueryLifecycle.start`: answered already (`answer`: a replay, a retry),
    or reserved and dispatched, for `QueryLifecycle.finish` to await."""

    query_id: str
    task: task_pb2.ExecuteQueryTask
    priority: int
    fresh: bool
    answer: QueryOutcome | None = None


class Peers:
    """The gateway's clients of the internal services."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.admin = AsyncPeer(
            settings.admin_target, admin_store_pb2_grpc.AdminStoreServiceStub, settings.peers
        )
        self.budget = AsyncPeer(
            settings.budget_target, budget_pb2_grpc.BudgetServiceStub, settings.peers
        )
        self.executor = AsyncPeer(
            settings.executor_target, executor_pb2_grpc.ExecutorServiceStub, settings.peers
        )

    async def close(self) -> None:
        for peer in (self.admin, self.budget, self.executor):
            await peer.close()


def send_query_task(
    celery: Celery, queue: str, task: task_pb2.ExecuteQueryTask, priority: int
) -> None:
    """Put a query's task on its queue with its priority (0 is served first; see
    `lomas_common.queue.task_priority`). The task id is the query id, so a re-send is the same task."""
    body = json_format.MessageToJson(task, indent=None)
    log.debug("query %s queued on %s with priority %d", task.query_id, queue, priority)
    with publishing(EXECUTE_QUERY_TASK, task.query_id, queue) as trace_headers:
        celery.send_task(
            EXECUTE_QUERY_TASK,
            args=[body],
            task_id=task.query_id,
            queue=queue,
            priority=priority,
            headers=trace_headers,
        )


def query_id_for(subject: str, request_id: str) -> str:
    if not request_id:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_QUERY_ID_NAMESPACE, f"{subject}\x00{request_id}"))


def _announced_outcome(payload: bytes, query_id: str) -> archive_pb2.ArchivedQuery | None:
    """The outcome a worker announced with its completion, if it carried one for this query."""
    if not payload:
        return None
    try:
        stored = archive_pb2.ArchivedQuery.FromString(payload)
    except DecodeError:
        log.warning("unreadable completion announcement for %s; reading the archive", query_id)
        return None
    return stored if stored.query_id == query_id else None


class QueryLifecycle:
    def __init__(
        self,
        settings: GatewaySettings,
        peers: Peers,
        celery: Celery,
        waiter: CompletionWaiter,
        lost_tasks: LostTaskFinder,
        claims: RequestClaims,
        flights: QueryFlights,
        access: AccessCache,
    ) -> None:
        self._settings = settings
        self._access = access
        self._peers = peers
        self._celery = celery
        self._waiter = waiter
        self._lost_tasks = lost_tasks
        self._claims = claims
        self._flights = flights
        self._pricer = Pricer(peers.executor)
        self._releases = KnownReleases()
        # Names this gateway process as the owner of the reservations it makes (for operators).
        self._owner = f"gateway:{socket.gethostname()}:{os.getpid()}"

    async def authorize(
        self, subject: str, dataset: str
    ) -> admin_store_pb2.AuthorizeDatasetAccessResponse:
        """The caller's grant on the dataset, or DATASET_ACCESS_DENIED (also for unknown datasets);
        read again only after an administrator changed something (`access.AccessCache`)."""
        if not dataset:
            raise InvalidArgument("dataset must be set", reason="DATASET_REQUIRED")

        async def read() -> admin_store_pb2.AuthorizeDatasetAccessResponse:
            try:
                access: admin_store_pb2.AuthorizeDatasetAccessResponse = (
                    await self._peers.admin.call(
                        "AuthorizeDatasetAccess",
                        admin_store_pb2.AuthorizeDatasetAccessRequest(
                            user=subject, dataset=dataset
                        ),
                    )
                )
            except RemoteError as error:
                if error.code in (Code.NOT_FOUND, Code.PERMISSION_DENIED):
                    raise DatasetAccessDenied(
                        f"no access to dataset {dataset!r}", metadata={"dataset": dataset}
                    ) from None
                raise
            return access

        return await self._access.authorize(subject, dataset, read)

    def check_query(self, query: query_pb2.Query) -> None:
        kind = query.WhichOneof("kind")
        if kind is None:
            raise InvalidQuery("query must be set", reason="QUERY_INVALID")
        if (
            kind == "smartnoise_sql"
            and len(query.smartnoise_sql.sql) > self._settings.max_query_chars
        ):
            raise InvalidQuery(
                f"query text longer than {self._settings.max_query_chars} characters",
                reason="QUERY_TOO_LONG",
            )

    def check_dummy_rows(self, rows: int) -> int:
        rows = rows or DEFAULT_DUMMY_ROWS
        if rows < 1 or rows > self._settings.max_dummy_rows:
            raise InvalidArgument(
                f"dummy row count must be between 1 and {self._settings.max_dummy_rows}",
                reason="DUMMY_ROWS_OUT_OF_RANGE",
            )
        return rows

    def known_cost(
        self, subject: str, descriptor: dataset_pb2.DatasetDescriptor, query: query_pb2.Query
    ) -> privacy_pb2.PrivacyLoss | None:
        """The cost of a query this caller had priced on this dataset version before, if any (no
        work: a repeated estimate needs no free-call slot)."""
        self.check_query(query)
        priced = self._pricer.known(subject, descriptor, query)
        return None if priced is None else priced.cost

    async def estimate_cost(
        self, subject: str, descriptor: dataset_pb2.DatasetDescriptor, query: query_pb2.Query
    ) -> privacy_pb2.PrivacyLoss:
        """The exact cost of the query on the dataset (free: an executor prices it on the metadata
        alone); remembered per caller, dataset descriptor and exact query."""
        self.check_query(query)
        return (await self._pricer.price(subject, descriptor, query)).cost

    async def run_dummy(
        self,
        descriptor: dataset_pb2.DatasetDescriptor,
        query: query_pb2.Query,
        rows: int,
        seed: int,
    ) -> QueryOutcome:
        self.check_query(query)
        response: executor_pb2.RunDummyQueryResponse = await self._peers.executor.call(
            "RunDummyQuery",
            executor_pb2.RunDummyQueryRequest(
                dataset=descriptor, query=query, row_count=self.check_dummy_rows(rows), seed=seed
            ),
        )
        return QueryOutcome(query_id="", release=response.arrow_ipc, cost=response.cost, dummy=True)

    @metrics.counts_refusals(lambda error: True)
    async def known_replay(
        self,
        subject: str,
        access: admin_store_pb2.AuthorizeDatasetAccessResponse,
        request: gateway_pb2.ExecuteQueryRequest,
    ) -> QueryOutcome | None:
        """A real query answered from what this gateway knows, with no work (so no query slot is
        needed): a free replay of a release it has seen, of a query it has priced, under a new
        request id. None when anything is not known: then `start`."""
        if request.fresh:
            return None
        _check_may_query(access)
        self.check_query(request.query)
        priced = self._pricer.known(subject, access.dataset, request.query)
        if priced is None:
            return None
        fingerprint = query_fingerprint(subject, access.dataset, priced.canonical)
        query_id = query_id_for(subject, request.request_id)
        return await self._known_release(fingerprint, query_id, request.request_id)

    @metrics.counts_refusals(lambda error: not isinstance(error, RemoteErrorFromArchive))
    async def start(
        self,
        subject: str,
        access: admin_store_pb2.AuthorizeDatasetAccessResponse,
        query: query_pb2.Query,
        request_id: str,
        *,
        fresh: bool = False,
        priority: int = 0,
    ) -> StartedQuery:
        """Steps 1 to 3: the price, the look back, the reservation and the dispatch. Every refusal
        that needs no data is raised here, before any charge; `finish` waits for the rest.

        The same query asked again by the same caller on the same dataset version is a free replay of
        the stored release (re-releasing a release is post-processing), unless `fresh` asks for a new
        draw, which is charged. `priority` is the task's queue priority (lower runs first; see
        `lomas_common.queue.task_priority`); a re-send of a lost task keeps it.
        """
        _check_may_query(access)
        self.check_query(query)
        # The price comes first: the fingerprint is taken over the canonical form it brings.
        priced = await self._pricer.price(subject, access.dataset, query)
        task = task_pb2.ExecuteQueryTask(
            query_id=query_id_for(subject, request_id),
            user=subject,
            dataset=access.dataset,
            query=query,
            fingerprint=query_fingerprint(subject, access.dataset, priced.canonical),
            cost=priced.cost,
        )
        looked_back, earlier = await self._look_back(task, request_id, fresh=fresh)
        if earlier is None and not fresh:
            earlier = await self._follow_identical(task)
        if earlier is not None:
            return StartedQuery(earlier.query_id, task, priority, fresh, answer=earlier)
        try:
            task.submit_time.CopyFrom(now_timestamp())
            state = await self._reserve(task)
            if not looked_back and state != budget_pb2.RESERVATION_STATE_RESERVED:
                # The id's claim had expired, yet its query was reserved long ago: the archive
                # answers (its first outcome, or REQUEST_ID_REUSED for another query).
                earlier = await self._earlier_answer(task, retry=True, fresh=fresh)
                if earlier is not None:
                    return StartedQuery(earlier.query_id, task, priority, fresh, answer=earlier)
            await self._dispatch(task, state, priority)
        except BaseException:
            if not fresh:
                await self._flights.land(task.fingerprint, task.query_id, released=False)
            raise
        return StartedQuery(task.query_id, task, priority, fresh)

    async def finish(self, started: StartedQuery) -> QueryOutcome:
        """Steps 4 and 5 of a started query: await its outcome and read it (a query answered at
        its start returns that answer). Call it once for each started query (it ends the wait
        `_dispatch` registered and lands the flight): one charge, at most one release."""
        if started.answer is not None:
            return started.answer
        task = started.task
        released = False
        try:
            completion = await self._await_completion(task, started.priority)
            outcome = await self._outcome_of(completion, task.query_id)
            released = True
            self._releases.remember(task.fingerprint, known_release(outcome))
            return outcome
        finally:
            if not started.fresh:
                await self._flights.land(task.fingerprint, task.query_id, released=released)

    async def _follow_identical(self, task: task_pb2.ExecuteQueryTask) -> QueryOutcome | None:
        """Single flight: lead the identical queries in flight (None: run it), or wait for the one
        in flight to land and answer with its release, a free replay. A flight that lands with no
        release (refused, failed, timed out) lets the next follower lead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.query_timeout_seconds
        while (leader := await self._flights.take_off(task.fingerprint, task.query_id)) is not None:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._flights.wait_for_landing(
                task.fingerprint, leader, remaining
            ):
                raise QueryTimeout(
                    "an identical query in flight did not finish in time; send the query again",
                    metadata={"queryId": task.query_id},
                )
            earlier = await self._earlier_answer(task, retry=False, fresh=False)
            if earlier is not None:
                return earlier
            if leader == LANDED:
                # Marked released, yet no release in the archive (it cannot be read, say): run.
                return None
        return None

    async def _look_back(
        self, task: task_pb2.ExecuteQueryTask, request_id: str, *, fresh: bool
    ) -> tuple[bool, QueryOutcome | None]:
        """Step 1's look back, with the binding of the request id to this query (even when a
        replay answers it): a retry bound to another query is refused by either. Returns whether
        the request id's first outcome was looked for (or cannot exist), and the earlier answer.

        A new request id has no first outcome, so a release this gateway knows needs no archive
        read, nor does a new `fresh` query; otherwise the archive read and the binding run
        together."""
        if not fresh:
            known = await self._known_release(task.fingerprint, task.query_id, request_id)
            if known is not None:
                return True, known
            earlier, _ = await asyncio.gather(
                self._earlier_answer(task, retry=bool(request_id), fresh=False),
                self._claims.bind(task.query_id, task.fingerprint) if request_id else _no_claim(),
            )
            return True, earlier
        if request_id and not await self._claims.bind(task.query_id, task.fingerprint):
            return True, await self._earlier_answer(task, retry=True, fresh=True)
        return False, None

    async def _known_release(
        self, fingerprint: str, query_id: str, request_id: str
    ) -> QueryOutcome | None:
        """A release of `fingerprint` this gateway knows (`releases.py`), as a free replay, when
        the request id is new (bound here for the first time); else None: the archive answers."""
        known = self._releases.find(fingerprint)
        if known is None:
            return None
        if request_id and not await self._claims.bind(query_id, fingerprint):
            return None
        metrics.replayed("release")
        return replay_of(known)

    async def _earlier_answer(
        self, task: task_pb2.ExecuteQueryTask, *, retry: bool, fresh: bool
    ) -> QueryOutcome | None:
        """Step 1, the look back: the stored outcome of this request id (when the request has one:
        a retry gets the first answer), else an earlier release of the same query (unless `fresh`:
        a free replay). One archive call reads both; neither touches data or budget."""
        if fresh and not retry:
            return None
        found: admin_store_pb2.FindReleasedQueryResponse = await self._peers.admin.call(
            "FindReleasedQuery",
            admin_store_pb2.FindReleasedQueryRequest(
                user=task.user,
                fingerprint=task.fingerprint,
                query_id=task.query_id if retry else "",
            ),
        )
        retried = found.stored if found.HasField("stored") else None
        earlier = found.query if found.found and not fresh else None
        if retried is not None:
            if retried.fingerprint != task.fingerprint:
                raise request_id_reused(task.query_id)
            metrics.replayed("retry")
            return stored_answer(retried)
        if earlier is not None:
            metrics.replayed("release")
            known = KnownRelease(earlier.query_id, earlier.release, earlier.cost)
            self._releases.remember(task.fingerprint, known)
            return replay_of(known)
        return None

    async def _reserve(
        self, task: task_pb2.ExecuteQueryTask
    ) -> budget_pb2.ReservationState.ValueType:
        """Step 2: hold the cost in the ledger, keyed by the query id (no reservation, no run). The
        same id again returns the reservation as it is now: a retry learns how far its query got."""
        reserved: budget_pb2.ReserveBudgetResponse = await self._peers.budget.call(
            "ReserveBudget",
            budget_pb2.ReserveBudgetRequest(
                query_id=task.query_id,
                user=task.user,
                dataset=task.dataset.name,
                cost=task.cost,
                actor=task.user,
                owner=self._owner,
            ),
        )
        state = reserved.reservation.state
        if state == budget_pb2.RESERVATION_STATE_RELEASED:
            # A retry of a query that was given up before it touched data (and refunded).
            raise FailedPrecondition(
                "this request id belongs to a query that was cancelled before it ran; "
                "send the query again with a new request id",
                reason="QUERY_ID_RELEASED",
                metadata={"queryId": task.query_id},
            )
        return state

    async def _dispatch(
        self,
        task: task_pb2.ExecuteQueryTask,
        state: budget_pb2.ReservationState.ValueType,
        priority: int,
    ) -> None:
        """Step 3: put the task on its queue, after registering for its announcement (so an early
        one is not missed). A queue that refuses it gives the reservation back: nothing ran."""
        self._waiter.expect(task.query_id)
        try:
            # A retry whose query a worker already picked up only waits for it; a duplicate task
            # would be harmless (the worker finds the stored outcome) but is not needed.
            if state == budget_pb2.RESERVATION_STATE_RESERVED:
                await self._enqueue(task, priority)
        except Exception:
            self._waiter.forget(task.query_id)
            await self._release_unstarted(task.query_id)
            raise BackendUnavailable(
                "the query queue is unavailable", peer="redis", retry_after_seconds=1.0
            ) from None

    async def _await_completion(self, task: task_pb2.ExecuteQueryTask, priority: int) -> Completion:
        """Step 4: wait for the worker's announcement (the normal road). Each poll interval without
        one, read the archive (a missed announcement) and check that the queue still knows the
        task (a lost one is sent again); see the module's docstring for why both exist."""
        query_id = task.query_id

        async def is_done() -> bool:
            return await self.stored_outcome(query_id) is not None

        watch = self._lost_tasks.watch(
            query_id, self._queue_of(task), lambda: self._enqueue(task, priority)
        )
        completion = await self._waiter.wait(
            query_id, self._settings.query_timeout_seconds, is_done, on_poll=watch.check
        )
        if completion is None:
            raise QueryTimeout(
                "the query did not finish in time; retry with the same request id to collect it",
                metadata={"queryId": query_id},
            )
        return completion

    async def _outcome_of(self, completion: Completion, query_id: str) -> QueryOutcome:
        """Step 5: the stored outcome, from the announcement when it carried it (small releases),
        else from the archive."""
        stored = _announced_outcome(completion.announced, query_id)
        if stored is None:
            stored = await self.stored_outcome(query_id)
        if stored is None:  # announced but not readable: the archive is the truth
            raise BackendUnavailable(
                "the query outcome is not readable yet", peer="admin", retry_after_seconds=1.0
            )
        return stored_answer(stored)

    def _queue_of(self, task: task_pb2.ExecuteQueryTask) -> str:
        return self._settings.queue.queue_for(task.query.WhichOneof("kind"))

    async def _enqueue(self, task: task_pb2.ExecuteQueryTask, priority: int) -> None:
        await asyncio.to_thread(send_query_task, self._celery, self._queue_of(task), task, priority)

    async def _release_unstarted(self, query_id: str) -> None:
        try:
            await self._peers.budget.call(
                "ReleaseReservation", budget_pb2.ReleaseReservationRequest(query_id=query_id)
            )
        except LomasError:
            log.exception("could not release reservation %s; the sweep will", query_id)

    async def stored_outcome(self, query_id: str) -> archive_pb2.ArchivedQuery | None:
        try:
            response: admin_store_pb2.GetArchivedQueryResponse = await self._peers.admin.call(
                "GetArchivedQuery", admin_store_pb2.GetArchivedQueryRequest(query_id=query_id)
            )
        except RemoteError as error:
            if error.code is Code.NOT_FOUND:
                return None
            raise
        return response.query


async def _no_claim() -> bool:
    return True


def _check_may_query(access: admin_store_pb2.AuthorizeDatasetAccessResponse) -> None:
    """A frozen user starts no query (the ledger checks its own copy of the freeze too)."""
    if not access.user.may_query:
        raise PermissionDenied("querying is suspended for this user", reason="USER_MAY_NOT_QUERY")
