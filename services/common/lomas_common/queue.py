"""The Celery queues shared by the gateway (producer) and the executor workers (consumers).

Messages are JSON (the protobuf JSON form of `ExecuteQueryTask`), never pickles. Tasks are idempotent
on their query id, which is why they are acknowledged late with a prefetch of one: a task whose worker
dies is redelivered, and the redelivery finds the stored release instead of drawing new noise.

Queues are per workload class, so heavy jobs never starve light ones: `light` (SmartNoise-SQL and
OpenDP queries) and `heavy` (DP machine learning and synthetic data, with their own worker images).
`queue_for(kind)` maps a query kind (the `Query.kind` oneof name) to its queue, and the app's router
applies it to every task that is sent without an explicit queue. Workers consume the classes their
settings name (LOMAS_WORKER_QUEUES).

Fairness inside a queue: every task carries a priority, the number of its user's queries that were
already in flight when it was sent (capped at `MAX_TASK_PRIORITY`). Kombu's Redis transport keeps
one list per priority and its BRPOP names them lowest number first, so a user's first query is
served before anyone's second, and so on: one user's backlog cannot starve another user's query.
Within a priority, tasks are served in the order they were sent.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery

EXECUTE_QUERY_TASK = "lomas.execute_query"

# Kombu's Redis transport (pinned) keeps a queue as one list per priority step, named `<queue>` for
# step 0 and `<queue>\x06\x16<step>` for the others, under its `global_keyprefix`. Its default
# steps (0, 3, 6, 9) would put priorities 0, 1 and 2 in one list; one step per priority keeps them
# apart. Lower numbers are served first (kombu's Redis transport; RabbitMQ is the other way round).
_KOMBU_PRIORITY_SEP = "\x06\x16"
MAX_TASK_PRIORITY = 9
_KOMBU_PRIORITY_STEPS = tuple(range(MAX_TASK_PRIORITY + 1))


def task_priority(already_in_flight: int) -> int:
    """The queue priority of a user's task: how many of their queries were already in flight,
    capped at the last step (0 is served first)."""
    return max(0, min(already_in_flight, MAX_TASK_PRIORITY))


class WorkloadClass(enum.Enum):
    """How heavy a query kind is; each class has its own queue and workers."""

    LIGHT = "light"
    HEAVY = "heavy"


# Query kinds (the `lomas.common.v1.Query.kind` oneof names) by workload class. Kinds not listed are
# light. DP ML and synthetic-data kinds go to HEAVY when they are added.
QUERY_KIND_WORKLOAD: Mapping[str, WorkloadClass] = {
    "smartnoise_sql": WorkloadClass.LIGHT,
    "opendp": WorkloadClass.LIGHT,
    "diffprivlib": WorkloadClass.HEAVY,
    "smartnoise_synth": WorkloadClass.HEAVY,
    "opendp_synth": WorkloadClass.HEAVY,
}


def workload_of(kind: str | None) -> WorkloadClass:
    return QUERY_KIND_WORKLOAD.get(kind or "", WorkloadClass.LIGHT)


def parse_workload_classes(text: str) -> tuple[WorkloadClass, ...]:
    """`"light,heavy"` -> the classes (ValueError for unknown names or an empty list)."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("name at least one workload class (light, heavy)")
    try:
        return tuple(dict.fromkeys(WorkloadClass(name) for name in names))
    except ValueError:
        raise ValueError(
            f"unknown workload class in {text!r} (expected light and/or heavy)"
        ) from None


@dataclass(frozen=True)
class QueueSettings:
    """Where the queues live and how long a task may run."""

    broker_url: str  # redis://host:port/db
    prefix: str = "lomas"  # namespaces queues and completion channels (several meshes, one Redis)
    task_time_limit_seconds: int = 300
    # How long Redis waits before redelivering an unacknowledged task (its worker died). It must
    # exceed the time limit, or a slow task would run twice at once; 0 picks 2 x limit + 60 s.
    visibility_timeout_seconds: int = 0

    def __post_init__(self) -> None:
        if self.task_time_limit_seconds < 1:
            raise ValueError("the task time limit must be at least 1 second")
        if 0 < self.visibility_timeout_seconds <= self.task_time_limit_seconds:
            raise ValueError("the visibility timeout must exceed the task time limit")

    @property
    def soft_time_limit_seconds(self) -> int:
        """When a task is asked to stop (SoftTimeLimitExceeded), 5 s before it is killed."""
        return max(1, self.task_time_limit_seconds - 5)

    @property
    def visibility_timeout(self) -> int:
        return self.visibility_timeout_seconds or self.task_time_limit_seconds * 2 + 60

    def queue(self, workload: WorkloadClass) -> str:
        return f"{self.prefix}.{workload.value}"

    @property
    def light_queue(self) -> str:
        """SQL and OpenDP queries."""
        return self.queue(WorkloadClass.LIGHT)

    @property
    def heavy_queue(self) -> str:
        """DP machine learning and synthetic data."""
        return self.queue(WorkloadClass.HEAVY)

    def queue_for(self, kind: str | None) -> str:
        """The queue of a query kind (the `Query.kind` oneof name)."""
        return self.queue(workload_of(kind))

    def queues(self, workloads: Iterable[WorkloadClass]) -> list[str]:
        return [self.queue(workload) for workload in workloads]

    def done_channel(self, query_id: str) -> str:
        """The Redis pub/sub channel on which a worker announces that a query's outcome is stored."""
        return f"{self.prefix}:query-done:{query_id}"

    @property
    def done_pattern(self) -> str:
        return f"{self.prefix}:query-done:*"

    def attempts_key(self, query_id: str) -> str:
        """Redis counter of a query's task deliveries (bounds crash loops)."""
        return f"{self.prefix}:query-attempts:{query_id}"

    @property
    def broker_key_prefix(self) -> str:
        """The prefix of every key the Celery broker writes (kombu's `global_keyprefix`)."""
        return f"{self.prefix}:"

    def broker_lists(self, queue: str) -> list[str]:
        """The Redis lists that hold a queue's waiting tasks, one per kombu priority step."""
        return [
            f"{self.broker_key_prefix}{queue}{_KOMBU_PRIORITY_SEP}{step}"
            if step
            else f"{self.broker_key_prefix}{queue}"
            for step in _KOMBU_PRIORITY_STEPS
        ]

    @property
    def unacked_key(self) -> str:
        """The Redis hash of the tasks workers hold and have not acknowledged yet."""
        return f"{self.broker_key_prefix}unacked"

    def timed_out_key(self, query_id: str) -> str:
        """Redis flag set when a query's task hit the hard time limit (its redelivery reports it)."""
        return f"{self.prefix}:query-timed-out:{query_id}"


def query_kind_of_task(body: str) -> str | None:
    """The query kind of an `ExecuteQueryTask` in protobuf JSON form (None if unreadable)."""
    try:
        query = json.loads(body).get("query") or {}
    except (ValueError, AttributeError):
        return None
    kinds = [key for key in query if key in QUERY_KIND_WORKLOAD] if isinstance(query, dict) else []
    return kinds[0] if kinds else None


def make_celery_app(settings: QueueSettings) -> Celery:
    app = Celery("lomas", broker=settings.broker_url)

    def route(
        name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
    ) -> dict[str, str] | None:
        if name != EXECUTE_QUERY_TASK:
            return None
        body = args[0] if args and isinstance(args[0], str) else ""
        return {"queue": settings.queue_for(query_kind_of_task(body))}

    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # outcomes live in the admin store's archive, not in Redis
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A hard time limit requeues the task: its redelivery records the timeout (and keeps the charge).
        task_acks_on_timeout=False,
        # A worker process holds at most the task it runs, so priorities decide who runs next.
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds,
        task_soft_time_limit=settings.soft_time_limit_seconds,
        task_default_queue=settings.light_queue,
        task_routes=(route,),
        # Redelivery must wait longer than any task may run, or a slow task would run twice at once.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Look for abandoned tasks every few seconds (kombu's default sweep is ~100 s), so a
            # redelivery follows the visibility timeout closely.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
            "global_keyprefix": settings.broker_key_prefix,
            "priority_steps": list(_KOMBU_PRIORITY_STEPS),
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_max_tasks_per_child=1000,
    )
    return app
