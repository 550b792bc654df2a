"""What a worker does with one `ExecuteQueryTask`: one charge, at most one release.

1. If the archive already holds an outcome for the query id (a redelivery, a duplicate), reuse it.
2. Otherwise mark the reservation ACCESSED (from here on it can never be refunded), load the data,
   run the query, and store the outcome under the query id: the first stored outcome wins.
3. Commit the charge (idempotent) and announce completion on Redis.

Only then does Celery acknowledge the task (acks_late), so a worker killed at any point leaves a task
that is redelivered and finishes the same steps without drawing new noise for a stored release.
"""

from __future__ import annotations

import logging

import redis
from billiard.exceptions import SoftTimeLimitExceeded
from google.protobuf import json_format

from lomas.admin.v1 import admin_store_pb2, admin_store_pb2_grpc
from lomas.budget.v1 import budget_pb2, budget_pb2_grpc
from lomas.common.v1 import archive_pb2
from lomas.executor.v1 import task_pb2
from lomas_common.convert import now_timestamp
from lomas_common.errors import InvalidQuery, LomasError
from lomas_common.peers import SyncPeer
from lomas_common.rpc_errors import RemoteError
from lomas_executor import convert
from lomas_executor.arrow_ipc import frame_to_ipc
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import QueryEngine
from lomas_executor.settings import WorkerSettings

log = logging.getLogger(__name__)


class QueryRunner:
    """The worker's side of the lifecycle, for one worker process."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._engine = QueryEngine(DatasetCache(max_bytes=settings.cache_bytes))
        self._admin = SyncPeer(
            settings.admin_target, admin_store_pb2_grpc.AdminStoreServiceStub, settings.peers
        )
        self._budget = SyncPeer(
            settings.budget_target, budget_pb2_grpc.BudgetServiceStub, settings.peers
        )
        self._redis = redis.Redis.from_url(settings.queue.broker_url)

    def execute(self, task_json: str) -> None:
        task = json_format.Parse(task_json, task_pb2.ExecuteQueryTask())
        if self._stored(task.query_id) is None:
            try:
                self._budget.call(
                    "MarkReservationAccessed",
                    budget_pb2.MarkReservationAccessedRequest(query_id=task.query_id),
                )
            except RemoteError as error:
                if error.reason in ("RESERVATION_RELEASED", "RESERVATION_NOT_FOUND"):
                    # The gateway gave up on this query before any data access: nothing to run.
                    log.warning(
                        "query %s has no live reservation (%s); dropped",
                        task.query_id,
                        error.reason,
                    )
                    return
                raise
            outcome = self._run(task)
            self._admin.call(
                "RecordQueryResult", admin_store_pb2.RecordQueryResultRequest(query=outcome)
            )
        self._budget.call(
            "CommitReservation", budget_pb2.CommitReservationRequest(query_id=task.query_id)
        )
        self._redis.publish(self._settings.queue.done_channel(task.query_id), b"1")

    def _stored(self, query_id: str) -> archive_pb2.ArchivedQuery | None:
        try:
            return self._admin.call(
                "GetArchivedQuery", admin_store_pb2.GetArchivedQueryRequest(query_id=query_id)
            ).query
        except RemoteError as error:
            if error.reason == "QUERY_NOT_FOUND":
                return None
            raise

    def _run(self, task: task_pb2.ExecuteQueryTask) -> archive_pb2.ArchivedQuery:
        """Run the query; any failure becomes a stored outcome that carries no data values."""
        outcome = archive_pb2.ArchivedQuery(
            query_id=task.query_id,
            user=task.user,
            dataset=task.dataset.name,
            query=task.query,
            cost=task.cost,
            submit_time=task.submit_time,
            fingerprint=task.fingerprint,
        )
        try:
            dataset = convert.dataset_from_proto(task.dataset)
            query = convert.query_from_proto(task.query)
            outcome.release = frame_to_ipc(self._engine.run(query, dataset))
            outcome.status = archive_pb2.QUERY_STATUS_SUCCEEDED
        except SoftTimeLimitExceeded:
            self._fail(
                outcome, "QUERY_TIMEOUT", "the query exceeded its time limit; its cost is charged"
            )
        except InvalidQuery as error:
            # The engine's messages describe the query, never data values.
            self._fail(outcome, "QUERY_INVALID", error.message)
        except LomasError as error:
            self._fail(outcome, error.reason, error.message)
        except Exception:
            log.exception("query %s failed after data access", task.query_id)
            self._fail(
                outcome,
                "QUERY_EXECUTION_FAILED",
                "the query failed after touching the data; its cost is charged",
            )
        outcome.complete_time.CopyFrom(now_timestamp())
        return outcome

    @staticmethod
    def _fail(outcome: archive_pb2.ArchivedQuery, reason: str, message: str) -> None:
        outcome.status = archive_pb2.QUERY_STATUS_FAILED
        outcome.error_reason = reason
        outcome.error_message = message

    def close(self) -> None:
        self._admin.close()
        self._budget.close()
        self._redis.close()
