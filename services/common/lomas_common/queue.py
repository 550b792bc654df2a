"""The Celery queue shared by the gateway (producer) and the executor workers (consumers).

Messages are JSON (the protobuf JSON form of `ExecuteQueryTask`), never pickles. Tasks are idempotent
on their query id, which is why they are acknowledged late with a prefetch of one: a task whose worker
dies is redelivered, and the redelivery finds the stored release instead of drawing new noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

EXECUTE_QUERY_TASK = "lomas.execute_query"


@dataclass(frozen=True)
class QueueSettings:
    """Where the queue lives and how long a task may run."""

    broker_url: str  # redis://host:port/db
    prefix: str = "lomas"  # namespaces queues and completion channels (several meshes, one Redis)
    task_time_limit_seconds: int = 300

    @property
    def light_queue(self) -> str:
        """SQL and OpenDP queries; heavy ML and synthetic-data jobs get queues of their own."""
        return f"{self.prefix}.light"

    def done_channel(self, query_id: str) -> str:
        """The Redis pub/sub channel on which a worker announces that a query's outcome is stored."""
        return f"{self.prefix}:query-done:{query_id}"

    @property
    def done_pattern(self) -> str:
        return f"{self.prefix}:query-done:*"


def make_celery_app(settings: QueueSettings) -> Celery:
    app = Celery("lomas", broker=settings.broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # outcomes live in the admin store's archive, not in Redis
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds,
        task_soft_time_limit=max(1, settings.task_time_limit_seconds - 5),
        task_default_queue=settings.light_queue,
        task_routes={EXECUTE_QUERY_TASK: {"queue": settings.light_queue}},
        # Redelivery must wait longer than any task may run, or a slow task would run twice at once.
        broker_transport_options={
            "visibility_timeout": settings.task_time_limit_seconds * 2 + 60,
            "global_keyprefix": f"{settings.prefix}:",
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_max_tasks_per_child=1000,
    )
    return app
