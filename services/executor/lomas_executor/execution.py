"""What a worker does with one `ExecuteQueryTask`: one charge, at most one release.

1. If the archive already holds an outcome for the query id (a redelivery, a duplicate), reuse it.
2. Otherwise compute, with this worker's own engine, the cost of exactly the query it will run, and
   mark the reservation accessed with that cost, charged at once (ACCESS and COMMIT entries in one
   ledger transaction): the ledger refuses (COST_MISMATCH) unless it is the reserved cost, so
   whatever the gateway sent, nothing runs that costs more than its charge. A refused or invalid
   query is refunded (no data was touched) and stored as failed at zero cost. From then on the
   charge stands whatever happens (there is no refund after data access): load the data, run the
   query, and store the outcome under the query id: the first stored outcome wins.
3. Announce completion on Redis, with the stored outcome when it is small (the archive's copy, so
   every delivery announces the same release).

Only then does Celery acknowledge the task (acks_late), so a worker killed at any point leaves a task
that is redelivered and finishes the same steps without drawing new noise for a stored release.

Deliveries are counted in Redis: a query whose earlier delivery hit the hard time limit is recorded
as QUERY_TIME_LIMIT_EXCEEDED, and one that has already killed its worker `max_attempts` times (a crash, the
memory limit) as QUERY_EXECUTION_FAILED, without running it again. Both keep the charge: the data
was accessed. Their messages carry no data values.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from billiard.exceptions import SoftTimeLimitExceeded
from google.protobuf import json_format

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc
from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas.common.v1 import archive_pb2, privacy_pb2
from lomas.executor.v1 import task_pb2
from lomas_common import metrics
from lomas_common.convert import now_timestamp, privacy_loss_to_proto, same_named, zero_cost
from lomas_common.errors import Code, LomasError
from lomas_common.peers import SyncPeer
from lomas_common.rpc_errors import RemoteError
from lomas_executor import convert
from lomas_executor.arrow_ipc import frame_to_ipc
from lomas_executor.cache import DatasetCache
from lomas_executor.deliveries import count_delivery
from lomas_executor.engine import QueryEngine
from lomas_executor.failures import caused_by, chain_names
from lomas_executor.settings import WorkerSettings
from lomas_executor.task_inputs import dataset_of

log = logging.getLogger(__name__)

# Outcomes up to this size travel in the completion announcement (Redis pub/sub); larger ones
# are read from the archive by the gateway.
ANNOUNCED_OUTCOME_MAX_BYTES = 1024 * 1024
TIMEOUT_MESSAGE = "the query exceeded its time limit; its cost is charged"
# A final outcome, not "not ready yet" (the gateway's QUERY_TIMEOUT): the charge stands.
TIME_LIMIT_EXCEEDED = "QUERY_TIME_LIMIT_EXCEEDED"
COST_MISMATCH = "COST_MISMATCH"
COST_MISMATCH_MESSAGE = (
    "the cost of this query differs from the cost reserved for it; nothing was run and the "
    "reservation was refunded: send the query again"
)


@dataclass(frozen=True)
class _Check:
    """What the worker found before any data access."""

    refunded: bool  # refused and refunded (its failure is stored): nothing more to do
    cost: privacy_pb2.PrivacyLoss | None = None  # its own cost of the query; None: nothing to check


class QueryRunner:
    """The worker's side of the lifecycle, for one worker process."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._engine = QueryEngine(
            DatasetCache(max_bytes=settings.cache_bytes),
            s3_secrets=settings.s3_secrets,
            limits=settings.limits,
            # The executor dry-ran every query before it was priced for its reservation.
            sql_dry_run=False,
            spark=settings.spark,
            lazy_parquet_bytes=settings.lazy_parquet_bytes,
        )
        self._admin = SyncPeer(
            settings.admin_target, admin_store_pb2_grpc.AdminStoreServiceStub, settings.peers
        )
        self._budget = SyncPeer(
            settings.budget_target, budget_pb2_grpc.BudgetServiceStub, settings.peers
        )
        self._redis = redis.Redis.from_url(settings.queue.broker_url)

    def execute(
        self, task_json: str, *, attempt: int | None = None, first_delivery: bool = False
    ) -> None:
        """Run one delivery of a task; `attempt` is its delivery number (counted here if None).

        `first_delivery` says that no delivery of this query id was ever counted before this one
        (`count_delivery` returned 1 for retry 0): no outcome can be stored yet, since every run
        is counted before it starts, so the archive lookup is skipped.
        """
        started = time.monotonic()
        task = json_format.Parse(task_json, task_pb2.ExecuteQueryTask())
        stored = None if first_delivery else self._stored(task.query_id)
        if stored is None:
            checked = self._checked_before_access(task)
            if checked.refunded:
                return
            # Charged at once: one ledger call and transaction, not a mark now and a commit later.
            request = budget_pb2.MarkReservationAccessedRequest(query_id=task.query_id, charge=True)
            if checked.cost is not None:
                request.expected_cost.CopyFrom(checked.cost)
            try:
                self._budget.call("MarkReservationAccessed", request)
            except RemoteError as error:
                if error.reason in ("RESERVATION_RELEASED", "RESERVATION_NOT_FOUND"):
                    # The gateway gave up on this query before any data access: nothing to run.
                    log.warning(
                        "query %s has no live reservation (%s); dropped",
                        task.query_id,
                        error.reason,
                    )
                    return
                if error.reason != COST_MISMATCH:
                    raise
                log.warning("query %s: its cost differs from its reservation", task.query_id)
                if self._refund_and_record(task, COST_MISMATCH, COST_MISMATCH_MESSAGE):
                    return
                # An earlier delivery (of a worker without this check) touched the data: the
                # charge stands, but a query whose cost differs from it never runs.
                outcome = self._new_outcome(task)
                self._fail(
                    outcome,
                    COST_MISMATCH,
                    "the cost of this query differs from the cost reserved for it; nothing was "
                    "run, and its reserved cost is charged",
                )
                outcome.complete_time.CopyFrom(now_timestamp())
                self._commit(task.query_id)
                metrics.budget_committed(task.dataset.name, task.cost)
                metrics.query_stored(False, COST_MISMATCH)
                self._announce(self._record(outcome))
                return
            if attempt is None:
                attempt = count_delivery(self._redis, self._settings.queue, task.query_id)
            outcome = self._attempt(task, attempt, started, first_delivery=first_delivery)
            stored = self._record(outcome)
            metrics.budget_committed(task.dataset.name, task.cost)
            metrics.query_stored(
                stored.status == archive_pb2.QUERY_STATUS_SUCCEEDED, stored.error_reason
            )
        else:
            # Idempotent; commits a reservation an earlier worker marked accessed without charging.
            self._commit(task.query_id)
            metrics.replayed("redelivery")
        self._announce(stored)

    def _commit(self, query_id: str) -> None:
        self._budget.call(
            "CommitReservation", budget_pb2.CommitReservationRequest(query_id=query_id)
        )

    def _record(self, outcome: archive_pb2.ArchivedQuery) -> archive_pb2.ArchivedQuery:
        """Store `outcome`; the archive keeps the first outcome of a query id and returns it."""
        response: admin_store_pb2.RecordQueryResultResponse = self._admin.call(
            "RecordQueryResult", admin_store_pb2.RecordQueryResultRequest(query=outcome)
        )
        return response.query

    def _announce(self, stored: archive_pb2.ArchivedQuery) -> None:
        """Tell the waiting gateway that the outcome is stored, with the stored outcome itself
        when it is small, which saves the gateway a read of the archive."""
        payload = stored.SerializeToString()
        if len(payload) > ANNOUNCED_OUTCOME_MAX_BYTES:
            payload = b""
        self._redis.publish(self._settings.queue.done_channel(stored.query_id), payload)

    def _checked_before_access(self, task: task_pb2.ExecuteQueryTask) -> _Check:
        """What the worker checks before any data access, and the cost of the query it will run.

        A dataset whose source certainly cannot be read, or a query this worker's engine refuses
        (or cannot cost), fails here: the reservation is released (refunded) and the failure
        stored at zero cost. If an earlier delivery already touched the data, nothing is refunded:
        the query runs as before, keeps its charge and fails the same way.
        Otherwise the cost is that of exactly `task.query` on `task.dataset`, by this worker's engine.
        """
        try:
            dataset = dataset_of(task.dataset)
            query = convert.query_from_proto(task.query)
            self._engine.preflight(dataset, query)
            cost = self._engine.estimate_cost(query, dataset)
        except LomasError as error:
            return _Check(refunded=self._refund_and_record(task, error.reason, error.message))
        except SoftTimeLimitExceeded:
            raise  # the task is retried (worker.py)
        except Exception as error:
            # No cost means no check: never run what the ledger cannot compare with its charge.
            log.error("query %s: no cost computed (%s)", task.query_id, chain_names(error))
            return _Check(
                refunded=self._refund_and_record(task, COST_MISMATCH, COST_MISMATCH_MESSAGE)
            )
        return _Check(refunded=False, cost=privacy_loss_to_proto(cost))

    def _refund_and_record(
        self, task: task_pb2.ExecuteQueryTask, reason: str, message: str
    ) -> bool:
        """Release the reservation of a query that touched no data and store its failure at zero
        cost, announced; False (nothing done) if an earlier delivery already touched the data."""
        try:
            self._budget.call(
                "ReleaseReservation",
                budget_pb2.ReleaseReservationRequest(query_id=task.query_id, reason=reason),
            )
        except RemoteError as release_error:
            if release_error.reason != "DATA_ACCESSED":
                raise
            return False
        metrics.query_refused(reason)
        outcome = self._new_outcome(task)
        outcome.cost.CopyFrom(zero_cost(task.cost))
        self._fail(outcome, reason, message)
        outcome.complete_time.CopyFrom(now_timestamp())
        self._announce(self._record(outcome))
        return True

    def _stored(self, query_id: str) -> archive_pb2.ArchivedQuery | None:
        try:
            response: admin_store_pb2.GetArchivedQueryResponse = self._admin.call(
                "GetArchivedQuery", admin_store_pb2.GetArchivedQueryRequest(query_id=query_id)
            )
        except RemoteError as error:
            if error.reason == "QUERY_NOT_FOUND":
                return None
            raise
        return response.query

    @property
    def engine(self) -> QueryEngine:
        return self._engine

    def _attempt(
        self,
        task: task_pb2.ExecuteQueryTask,
        attempt: int,
        started: float,
        *,
        first_delivery: bool = False,
    ) -> archive_pb2.ArchivedQuery:
        """Run the query, unless earlier deliveries show it cannot finish (then record why).
        A first delivery has no earlier one that could have hit the hard time limit."""
        timed_out = not first_delivery and self._redis.exists(
            self._settings.queue.timed_out_key(task.query_id)
        )
        if timed_out:
            log.warning("query %s hit the hard time limit; recorded as timed out", task.query_id)
            outcome = self._new_outcome(task)
            self._fail(outcome, TIME_LIMIT_EXCEEDED, TIMEOUT_MESSAGE)
        elif int(attempt) > self._settings.max_attempts:
            log.warning(
                "query %s stopped its worker %d times; recorded as failed",
                task.query_id,
                int(attempt) - 1,
            )
            outcome = self._new_outcome(task)
            self._fail(
                outcome,
                "QUERY_EXECUTION_FAILED",
                f"the query stopped its worker {int(attempt) - 1} times (a crash or the memory "
                "limit); its cost is charged",
            )
        else:
            return self._run(task, started)
        outcome.complete_time.CopyFrom(now_timestamp())
        return outcome

    @staticmethod
    def _new_outcome(task: task_pb2.ExecuteQueryTask) -> archive_pb2.ArchivedQuery:
        """The outcome of `task` before it has one: what the task says of the query."""
        return archive_pb2.ArchivedQuery(
            dataset=task.dataset.name,
            **same_named(task, "query_id", "user", "query", "cost", "submit_time", "fingerprint"),
        )

    def _run(self, task: task_pb2.ExecuteQueryTask, started: float) -> archive_pb2.ArchivedQuery:
        """Run the query; any failure becomes a stored outcome that carries no data values."""
        outcome = self._new_outcome(task)
        try:
            dataset = dataset_of(task.dataset)
            query = convert.query_from_proto(task.query)
            outcome.release = frame_to_ipc(self._engine.run(query, dataset))
            outcome.status = archive_pb2.QUERY_STATUS_SUCCEEDED
        except BaseException as error:
            past_soft_limit = (
                time.monotonic() - started >= self._settings.queue.soft_time_limit_seconds
            )
            self._record_failure(task.query_id, outcome, error, timed_out=past_soft_limit)
        outcome.complete_time.CopyFrom(now_timestamp())
        return outcome

    def _record_failure(
        self,
        query_id: str,
        outcome: archive_pb2.ArchivedQuery,
        error: BaseException,
        *,
        timed_out: bool,
    ) -> None:
        """The stored failure for `error`: its reason, and a message without data values.

        Libraries wrap the time limit and memory errors (SQLAlchemy, pandas), so causes count too;
        some lose the cause altogether (the soft limit landing in a callback from pyarrow's C++),
        so a failure after the soft limit (`timed_out`) is a timeout too.
        Logs name exception classes only: messages after data access may quote data.
        """
        if caused_by(error, SoftTimeLimitExceeded):
            self._timed_out(query_id, outcome)
        elif caused_by(error, MemoryError):
            log.error("query %s ran out of memory (%s)", query_id, chain_names(error))
            self._fail(
                outcome,
                "QUERY_EXECUTION_FAILED",
                "the query ran out of memory after touching the data; its cost is charged",
            )
        elif isinstance(error, LomasError) and error.code is Code.INVALID_ARGUMENT:
            # The query was at fault. The engine's messages describe the query and the schema,
            # never data values.
            self._fail(outcome, error.reason, error.message)
        elif isinstance(error, LomasError):
            # The data or its source failed (unreadable, gone since the check before access):
            # after access that is an execution failure, charged, whatever the platform's state.
            self._fail(outcome, "QUERY_EXECUTION_FAILED", f"{error.message}; its cost is charged")
        elif isinstance(error, Exception) and timed_out:
            log.warning(
                "query %s failed past its soft time limit (%s)", query_id, chain_names(error)
            )
            self._timed_out(query_id, outcome)
        elif isinstance(error, Exception):
            log.error("query %s failed after data access (%s)", query_id, chain_names(error))
            self._fail(
                outcome,
                "QUERY_EXECUTION_FAILED",
                "the query failed after touching the data; its cost is charged",
            )
        else:
            raise error

    def _timed_out(self, query_id: str, outcome: archive_pb2.ArchivedQuery) -> None:
        log.warning("query %s exceeded its time limit", query_id)
        self._fail(outcome, TIME_LIMIT_EXCEEDED, TIMEOUT_MESSAGE)

    @staticmethod
    def _fail(outcome: archive_pb2.ArchivedQuery, reason: str, message: str) -> None:
        outcome.status = archive_pb2.QUERY_STATUS_FAILED
        outcome.error_reason = reason
        outcome.error_message = message

    def close(self) -> None:
        self._admin.close()
        self._budget.close()
        self._redis.close()
