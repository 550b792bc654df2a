"""Run the executor service: `lomas-executor` (configured by LOMAS_ environment variables)."""

from __future__ import annotations

from lomas.executor.v1 import executor_pb2_grpc
from lomas_common.blocking_server import (
    BlockingServer,
    serve_blocking_until_signalled,
    start_blocking_server,
)
from lomas_common.server import Service, configure_logging
from lomas_executor.api import ExecutorServicer
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import QueryEngine
from lomas_executor.settings import ExecutorSettings


def start(settings: ExecutorSettings) -> BlockingServer:
    # The executor service never loads private data: its cache stays empty.
    engine = QueryEngine(DatasetCache(max_bytes=0))
    return start_blocking_server(
        settings.server,
        [
            Service(
                executor_pb2_grpc.add_ExecutorServiceServicer_to_server,
                ExecutorServicer(engine),
                "lomas.executor.v1.ExecutorService",
            )
        ],
        threads=settings.server.threads,
    )


def main() -> None:
    settings = ExecutorSettings.from_env()
    configure_logging(settings.server.log_level)
    serve_blocking_until_signalled(start(settings))


if __name__ == "__main__":
    main()
