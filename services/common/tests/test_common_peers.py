"""Calling peers: the peer's name comes from its generated stub, the typed health check reads a real
server's health, and a peer's stub is the generated one for its channel kind."""

from __future__ import annotations

import asyncio

import grpc
from common_testing import EXECUTOR, BlockingExecutor, closed_port, settings
from grpc_health.v1 import health_pb2

from lomas.budget.v1 import budget_pb2_grpc
from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.blocking_server import start_blocking_server
from lomas_common.peers import AsyncPeer, PeerSettings, SyncPeer, health_check, peer_name
from lomas_common.server import Service

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_a_peer_is_named_after_the_package_of_its_stub() -> None:
    assert peer_name(executor_pb2_grpc.ExecutorServiceStub) == "executor"
    assert peer_name(budget_pb2_grpc.BudgetServiceStub) == "budget"
    assert peer_name(SyncPeer) == "SyncPeer"  # not a generated stub: its class name


def test_the_health_check_reads_the_servers_status() -> None:
    service = Service(
        executor_pb2_grpc.add_ExecutorServiceServicer_to_server, BlockingExecutor(), EXECUTOR
    )
    server = start_blocking_server(settings(), [service], threads=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            check = health_check(channel)
            assert check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
            named = health_pb2.HealthCheckRequest(service=EXECUTOR)
            assert check(named, timeout=5).status == SERVING
        peer = SyncPeer(
            f"127.0.0.1:{server.port}", executor_pb2_grpc.ExecutorServiceStub, PeerSettings()
        )
        try:
            assert isinstance(peer.stub, executor_pb2_grpc.ExecutorServiceStub)
            response = peer.call("EstimateCost", executor_pb2.EstimateCostRequest())
            assert response == executor_pb2.EstimateCostResponse()
        finally:
            peer.close()
    finally:
        server.stop()


def test_an_async_peer_is_not_serving_while_nothing_listens() -> None:
    async def scenario() -> bool:
        target = f"127.0.0.1:{closed_port()}"
        peer = AsyncPeer(target, executor_pb2_grpc.ExecutorServiceStub, PeerSettings())
        try:
            return await peer.serving()
        finally:
            await peer.close()

    assert asyncio.run(scenario()) is False
