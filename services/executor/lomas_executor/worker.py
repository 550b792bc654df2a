"""The Celery worker: `lomas-worker` (configured by LOMAS_ environment variables).

The task holds no logic: it hands the message to `QueryRunner`. Each worker process builds its own
runner (gRPC channels and caches must not cross a fork), on first use. The main process never
imports the engines (Polars, via OpenDP and smartnoise-sql): each child imports them as it starts,
before it takes a task, so Polars' threads belong to the child that uses them.

Safety limits, from `WorkerSettings`: each task has a soft and a hard time limit (the soft one lets
the runner record QUERY_TIME_LIMIT_EXCEEDED; the hard one kills the child, flags the query in Redis and requeues
the task, whose redelivery records the timeout), each child has an optional address-space limit
(RLIMIT_AS) and is replaced after a bounded number of tasks or when its memory grows past a bound.
A child that dies mid-task (crash, out of memory) has its task redelivered; after
`max_attempts` deliveries the runner records a failure instead of running it again. Every such
failure after data access keeps the charge.

Telemetry (`lomas_common.telemetry`): each delivery is a consumer span in the trace of the call
that queued it (the task's headers carry its context), and the runner's peer calls are its
children. The main process serves the metrics endpoint and samples the queues' depth; the children
relay their recordings to it (a forked child's own meter could never be scraped).
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import Celery, Task, signals
from celery.exceptions import Retry

from lomas_common import metrics, telemetry
from lomas_common.errors import BackendUnavailable
from lomas_common.queue import EXECUTE_QUERY_TASK, make_celery_app
from lomas_common.rpc_errors import RemoteError
from lomas_common.telemetry import TelemetrySettings
from lomas_executor.deliveries import count_delivery
from lomas_executor.health_file import install_health_file
from lomas_executor.settings import WorkerSettings

if TYPE_CHECKING:
    from lomas_executor.execution import QueryRunner

log = logging.getLogger(__name__)

# Deliveries beyond `max_attempts` that may still try to record the failure before giving up.
GIVE_UP_AFTER_EXTRA_DELIVERIES = 2
# How long a new child may take to start: it imports the engines first (about 3 s on a slow
# 2-core machine; Celery's default allows 4 s). Tasks go only to children that have started.
CHILD_START_SECONDS = 60.0


class QueryTask(Task[[str], None]):
    """Carries the process's runner; Celery creates one task instance per worker process."""

    _runner: QueryRunner | None = None
    _redis: redis.Redis | None = None
    _cache_reported: tuple[int, int] = (0, 0)  # dataset cache (hits, misses) already counted

    @property
    def runner(self) -> QueryRunner:
        if self._runner is None:
            # Imported here, in the child: the main process must never import the engines
            # (Polars, via OpenDP and smartnoise-sql), or its forked children lose Polars'
            # thread pool (see `lomas_executor.deliveries`).
            from lomas_executor.execution import QueryRunner

            self._runner = QueryRunner(self.app.conf.lomas_settings)
        return self._runner

    def count_delivery(self) -> int:
        """Count this delivery first, with a plain Redis client: even a child that dies while
        building its runner (gRPC channels) leaves a count, so crash loops stay bounded."""
        settings: WorkerSettings = self.app.conf.lomas_settings
        if self._redis is None:
            self._redis = redis.Redis.from_url(settings.queue.broker_url)
        return count_delivery(
            self._redis, settings.queue, str(self.request.id), int(self.request.retries or 0)
        )

    def report_cache_lookups(self) -> None:
        """Count the dataset cache's lookups since the last report (`lomas_common.metrics`)."""
        if self._runner is None:
            return
        stats = self._runner.engine.cache.stats()
        hits, misses = self._cache_reported
        metrics.cache_lookups(stats.hits - hits, stats.misses - misses)
        self._cache_reported = (stats.hits, stats.misses)

    @property
    def queue(self) -> str:
        """The queue this delivery came from."""
        return str((self.request.delivery_info or {}).get("routing_key") or "unknown")

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # Runs in the main process for hard time limits (the child was killed): flag the query, so
        # the redelivery (the task is requeued) records QUERY_TIME_LIMIT_EXCEEDED instead of running it again.
        if isinstance(exc, TimeLimitExceeded):
            settings: WorkerSettings = self.app.conf.lomas_settings
            try:
                client = redis.Redis.from_url(settings.queue.broker_url)
                try:
                    client.set(settings.queue.timed_out_key(task_id), b"1", ex=7 * 24 * 3600)
                finally:
                    client.close()
            except redis.RedisError:
                log.exception("could not flag query %s as timed out", task_id)


def _is_retryable(error: Exception) -> bool:
    return isinstance(error, BackendUnavailable) or (
        isinstance(error, RemoteError) and error.code.value in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    )


def limit_child_memory(limit_mb: int) -> None:
    """Cap this process's address space (RLIMIT_AS) at `limit_mb` MiB (0: no limit)."""
    if limit_mb <= 0:
        return
    limit = limit_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def create_app(settings: WorkerSettings) -> Celery:
    app = make_celery_app(settings.queue)
    app.conf.lomas_settings = settings
    app.conf.worker_max_tasks_per_child = settings.max_tasks_per_child
    app.conf.worker_proc_alive_timeout = CHILD_START_SECONDS
    if settings.max_memory_per_child_kb:
        app.conf.worker_max_memory_per_child = settings.max_memory_per_child_kb
    install_health_file(app, settings.health_file)

    def deliver(self: QueryTask, task_json: str) -> None:
        """One delivery of a query's task: count it, run it, retry what a peer's outage stopped."""
        attempt = self.count_delivery()
        if attempt > settings.max_attempts + GIVE_UP_AFTER_EXTRA_DELIVERIES:
            # Even recording the failure keeps killing the worker: stop redelivering.
            log.critical(
                "query %s: delivery %d, its worker keeps dying before it can record a failure; "
                "dropped (its reservation stays accessed, so its cost stays charged)",
                self.request.id,
                attempt,
            )
            return
        try:
            first = attempt == 1 and not self.request.retries
            self.runner.execute(task_json, attempt=attempt, first_delivery=first)
        except SoftTimeLimitExceeded:
            # The soft limit fell outside the query's run (which records it as QUERY_TIME_LIMIT_EXCEEDED),
            # in a call to a peer, say. A new delivery, with a new time limit, finishes the steps.
            log.warning("query %s: time limit outside the run; retrying", self.request.id)
            raise self.retry(countdown=1, max_retries=30) from None
        except Exception as error:
            if _is_retryable(error):
                # Every step is idempotent on the query id, so running the task again is safe.
                raise self.retry(countdown=1, max_retries=30) from None
            raise

    @app.task(name=EXECUTE_QUERY_TASK, base=QueryTask, bind=True)
    def execute_query(self: QueryTask, task_json: str) -> None:
        # One span per delivery, in the trace of the call that queued the task; its peer calls
        # (reservation, archive write, commit) are its children.
        with telemetry.processing(self.request, EXECUTE_QUERY_TASK, self.queue):
            started, outcome = time.perf_counter(), "error"
            try:
                deliver(self, task_json)
                outcome = "done"
            except Retry:
                outcome = "retry"
                raise
            finally:
                metrics.task_ran(outcome, time.perf_counter() - started)
                self.report_cache_lookups()

    return app


def waiting_tasks(settings: WorkerSettings) -> Callable[[], list[tuple[str, int]]]:
    """Reads, for each queue this worker consumes, how many tasks wait in Redis (every priority)."""
    client: redis.Redis | None = None
    queues = settings.queue.queues(settings.workloads)

    def depths() -> list[tuple[str, int]]:
        nonlocal client
        if client is None:
            client = redis.Redis.from_url(settings.queue.broker_url, socket_timeout=2.0)
        pipeline = client.pipeline(transaction=False)
        for queue in queues:
            for key in settings.queue.broker_lists(queue):
                pipeline.llen(key)
        counts = iter(pipeline.execute())
        return [
            (queue, sum(int(next(counts)) for _ in settings.queue.broker_lists(queue)))
            for queue in queues
        ]

    return depths


def main() -> None:
    settings = WorkerSettings.from_env()
    # The main process serves the metrics endpoint (its children relay theirs to it); each child
    # traces the tasks it runs, with exporters of its own (made after the fork).
    observed = TelemetrySettings.from_env(log_level=settings.log_level)
    _, relay = telemetry.setup_worker(observed)
    metrics.observe_queue_depth(waiting_tasks(settings))
    logging.getLogger("celery").setLevel(settings.log_level.upper())
    quiet_task_receipts()
    app = create_app(settings)

    @signals.worker_process_init.connect(weak=False)
    def _init_child(**_: object) -> None:
        limit_child_memory(settings.task_memory_limit_mb)
        telemetry.setup_worker_child(observed, relay)

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_exits(**_: object) -> None:
        telemetry.current().shutdown()  # spans still in a batch are sent before the child exits

    preload_engines()
    app.worker_main(worker_argv(settings))


def preload_engines() -> None:
    """Import the engines (and warm smartnoise-sql's parser) once, in the main process, before the
    pool forks its children: a child, new at start or replacing one that reached
    `max_tasks_per_child`, then starts in milliseconds instead of spending 1.5 to 2 CPU-seconds
    importing them while queries wait. Nothing here starts a thread or touches data, so forking
    after it is safe."""
    from lomas_executor import execution, smartnoise_sql

    del execution  # imported for its engines
    smartnoise_sql.warm_up()


def quiet_task_receipts() -> None:
    """Log each task's receipt at DEBUG only: Celery logs it at INFO in the main process, between
    taking the message from Redis and handing it to a child, on the path of every query. Its
    outcome ("succeeded", "retry", failures) is still logged, by the child, after the task."""
    if not logging.getLogger("celery").isEnabledFor(logging.DEBUG):
        logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)


def worker_argv(settings: WorkerSettings) -> list[str]:
    """The Celery worker's arguments: it consumes the queues of its workload classes only."""
    queues = ",".join(settings.queue.queues(settings.workloads))
    return [
        "worker",
        f"--loglevel={settings.log_level}",
        f"--concurrency={settings.concurrency}",
        f"--queues={queues}",
        f"--hostname=lomas-worker-{os.getpid()}@{socket.gethostname()}",
        "--pool=prefork",
        "--without-gossip",
        "--without-mingle",
    ]


if __name__ == "__main__":
    main()
