"""Run the executor service: `lomas-executor` (configured by LOMAS_ environment variables)."""

from __future__ import annotations

import asyncio

from lomas.executor.v1 import executor_pb2_grpc
from lomas_common.server import (
    RunningServer,
    Service,
    configure_logging,
    serve_until_signalled,
    start_server,
)
from lomas_executor.api import ExecutorServicer
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import QueryEngine
from lomas_executor.settings import ExecutorSettings


async def start(settings: ExecutorSettings) -> RunningServer:
    # The executor service never loads private data: its cache stays empty.
    engine = QueryEngine(DatasetCache(max_bytes=0))
    return await start_server(
        settings.server,
        [
            Service(
                executor_pb2_grpc.add_ExecutorServiceServicer_to_server,
                ExecutorServicer(engine),
                "lomas.executor.v1.ExecutorService",
            )
        ],
    )


async def run(settings: ExecutorSettings) -> None:
    await serve_until_signalled(await start(settings))


def main() -> None:
    settings = ExecutorSettings.from_env()
    configure_logging(settings.server.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
