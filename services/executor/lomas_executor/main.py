"""Run the executor service: `lomas-executor` (configured by LOMAS_ environment variables).

The server process runs no engine: every call goes to the free-call pool's children
(`lomas_executor.sandbox`), which stop with the server.
"""

from __future__ import annotations

from lomas_common.blocking_server import (
    BlockingServer,
    run_blocking_service,
    start_blocking_server,
)
from lomas_common.server import Service
from lomas_executor.api import SERVICE_NAME, ExecutorServicer, add_executor_service
from lomas_executor.sandbox import FreeCallPool
from lomas_executor.settings import ExecutorSettings


def start(settings: ExecutorSettings) -> tuple[BlockingServer, FreeCallPool]:
    """Start the free-call pool (one child ready at least), then the server in front of it."""
    pool = FreeCallPool(
        settings.free_calls,
        settings.limits,
        settings.server.log_level,
        s3_secrets=settings.s3_secrets,
    ).start()
    try:
        server = start_blocking_server(
            settings.server,
            [Service(add_executor_service, ExecutorServicer(pool), SERVICE_NAME)],
            # A waiting call holds a thread: room for every call the pool admits, and for health.
            threads=max(
                settings.server.threads,
                settings.free_calls.workers + settings.free_calls.queue + 4,
            ),
        )
    except BaseException:
        pool.close()
        raise
    return server, pool


def main() -> None:
    # The server drains its calls first, then the children go (none outlives the service).
    run_blocking_service(ExecutorSettings.from_env, start)


if __name__ == "__main__":
    main()
