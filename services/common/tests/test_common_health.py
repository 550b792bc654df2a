"""Health tells the truth: SERVING once started, NOT_SERVING from the start of a shutdown, and (with
dependencies) the services NOT_SERVING while a peer is down while "" keeps describing the process."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import cast

import grpc
from common_testing import EXECUTOR, AsyncExecutor, BlockingExecutor, settings
from grpc_health.v1 import health_pb2

from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.blocking_server import start_blocking_server
from lomas_common.peers import AsyncPeer, PeerSettings, health_check
from lomas_common.server import Service, start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Health.Check called in-process, where no call can reach a stopping server: it reads its context
# only to answer NOT_FOUND for an unregistered service, and these tests ask registered ones.
NO_CONTEXT = cast(grpc.ServicerContext, None)
NO_ASYNC_CONTEXT = cast(
    grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse], None
)


def executor_service(servicer: object) -> Service:
    return Service(executor_pb2_grpc.add_ExecutorServiceServicer_to_server, servicer, EXECUTOR)


def check(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(health_check(channel)(request, timeout=5).status)


def test_blocking_server_reports_not_serving_from_the_start_of_its_shutdown() -> None:
    servicer = BlockingExecutor()
    servicer.slow = True
    server = start_blocking_server(settings(grace=10.0), [executor_service(servicer)], threads=2)
    assert check(server.port) == SERVING
    assert check(server.port, EXECUTOR) == SERVING
    # A call in flight holds the drain open; during it the health servicer says NOT_SERVING.
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        in_flight = stub.EstimateCost.future(executor_pb2.EstimateCostRequest(), timeout=10)
        time.sleep(0.2)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        time.sleep(0.2)
        assert server.health is not None
        for name in ("", EXECUTOR):
            response = server.health.Check(health_pb2.HealthCheckRequest(service=name), NO_CONTEXT)
            assert response.status == NOT_SERVING, name
        servicer.release.set()
        in_flight.result()
        stopper.join(10)


class Switch:
    """A dependency whose health the test sets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True

    async def serving(self) -> bool:
        return self.up


def test_services_follow_their_dependencies_and_the_server_name_does_not() -> None:
    async def scenario() -> None:
        executor = Switch("executor")
        running = await start_server(
            settings(),
            [executor_service(AsyncExecutor())],
            dependencies=[Switch("budget"), executor],
            dependency_check_seconds=0.05,
        )
        loop = asyncio.get_running_loop()

        async def status(name: str) -> int:
            return await loop.run_in_executor(None, check, running.port, name)

        async def settles(name: str, expected: int) -> None:
            deadline = loop.time() + 5
            while await status(name) != expected:
                assert loop.time() < deadline, (name, expected)
                await asyncio.sleep(0.02)

        try:
            await settles(EXECUTOR, SERVING)
            executor.up = False
            await settles(EXECUTOR, NOT_SERVING)
            assert await status("") == SERVING  # the process itself is fine
            executor.up = True
            await settles(EXECUTOR, SERVING)
        finally:
            await running.stop()
        assert running.health is not None
        response = await running.health.Check(health_pb2.HealthCheckRequest(), NO_ASYNC_CONTEXT)
        assert response.status == NOT_SERVING

    asyncio.run(scenario())


def test_a_peer_is_serving_only_while_its_server_is() -> None:
    server = start_blocking_server(settings(), [executor_service(BlockingExecutor())], threads=2)
    target = f"127.0.0.1:{server.port}"

    async def serving() -> bool:
        peer = AsyncPeer(target, executor_pb2_grpc.ExecutorServiceStub, PeerSettings())
        try:
            return await peer.serving()
        finally:
            await peer.close()

    try:
        assert asyncio.run(serving()) is True
    finally:
        server.stop()
    assert asyncio.run(serving()) is False
