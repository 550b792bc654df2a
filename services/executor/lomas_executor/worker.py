"""The Celery worker: `lomas-worker` (configured by LOMAS_ environment variables).

The task holds no logic: it hands the message to `QueryRunner`. Each worker process builds its own
runner (gRPC channels and caches must not cross a fork), on first use.
"""

from __future__ import annotations

import logging
import os
import socket

from celery import Celery, Task

from lomas_common.errors import BackendUnavailable
from lomas_common.queue import EXECUTE_QUERY_TASK, make_celery_app
from lomas_common.rpc_errors import RemoteError
from lomas_common.server import configure_logging
from lomas_executor.execution import QueryRunner
from lomas_executor.settings import WorkerSettings


class QueryTask(Task):  # type: ignore[misc]
    """Carries the process's runner; Celery creates one task instance per worker process."""

    _runner: QueryRunner | None = None

    @property
    def runner(self) -> QueryRunner:
        if self._runner is None:
            self._runner = QueryRunner(self.app.conf.lomas_settings)
        return self._runner


def _is_retryable(error: Exception) -> bool:
    return isinstance(error, BackendUnavailable) or (
        isinstance(error, RemoteError) and error.code.value in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    )


def create_app(settings: WorkerSettings) -> Celery:
    app = make_celery_app(settings.queue)
    app.conf.lomas_settings = settings

    @app.task(name=EXECUTE_QUERY_TASK, base=QueryTask, bind=True)
    def execute_query(self: QueryTask, task_json: str) -> None:
        try:
            self.runner.execute(task_json)
        except Exception as error:
            if _is_retryable(error):
                # Every step is idempotent on the query id, so running the task again is safe.
                raise self.retry(countdown=1, max_retries=30) from None
            raise

    return app


def main() -> None:
    settings = WorkerSettings.from_env()
    configure_logging(settings.log_level)
    logging.getLogger("celery").setLevel(settings.log_level.upper())
    app = create_app(settings)
    app.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level}",
            f"--concurrency={settings.concurrency}",
            f"--queues={settings.queue.light_queue}",
            f"--hostname=lomas-worker-{os.getpid()}@{socket.gethostname()}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
