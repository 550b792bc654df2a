"""A peer that is down, goes away mid-call or does not answer in time: UNAVAILABLE, reason
BACKEND_UNAVAILABLE, a RetryInfo and the peer's name, also through the gateway's edge. Errors that
carry an ErrorInfo keep their code, reason and retry advice."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from common_testing import (
    EXECUTOR,
    BlockingExecutor,
    EstimateCostOnly,
    closed_port,
    settings,
)

from lomas.admin.v1 import admin_store_pb2_grpc
from lomas.budget.v1 import budget_pb2_grpc
from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.blocking_server import start_blocking_server
from lomas_common.errors import BackendUnavailable, Code, LomasError
from lomas_common.peers import AsyncPeer, PeerSettings, SyncPeer, peer_name
from lomas_common.rpc_errors import RemoteError, from_rpc_error
from lomas_common.server import Service, start_server
from lomas_testing.rich_status import error_info, retry_info


def executor_service(servicer: object) -> Service:
    return Service(executor_pb2_grpc.add_ExecutorServiceServicer_to_server, servicer, EXECUTOR)


def assert_peer_unavailable(error: LomasError, peer: str) -> None:
    assert isinstance(error, BackendUnavailable), repr(error)
    assert (error.code, error.reason) == (Code.UNAVAILABLE, "BACKEND_UNAVAILABLE")
    assert error.metadata == {"peer": peer}
    assert error.retry_after_seconds == 1.0


def test_peers_are_named_after_their_package() -> None:
    assert peer_name(executor_pb2_grpc.ExecutorServiceStub) == "executor"
    assert peer_name(budget_pb2_grpc.BudgetServiceStub) == "budget"
    assert peer_name(admin_store_pb2_grpc.AdminStoreServiceStub) == "admin"


def test_a_peer_that_is_down_is_backend_unavailable() -> None:
    peer = SyncPeer(
        f"127.0.0.1:{closed_port()}", executor_pb2_grpc.ExecutorServiceStub, PeerSettings()
    )
    try:
        with pytest.raises(LomasError) as raised:
            peer.call("EstimateCost", executor_pb2.EstimateCostRequest(), timeout=5)
    finally:
        peer.close()
    assert_peer_unavailable(raised.value, "executor")


def test_a_peer_that_does_not_answer_in_time_is_backend_unavailable() -> None:
    servicer = BlockingExecutor()
    servicer.slow = True
    server = start_blocking_server(settings(), [executor_service(servicer)], threads=2)
    peer = SyncPeer(
        f"127.0.0.1:{server.port}", executor_pb2_grpc.ExecutorServiceStub, PeerSettings()
    )
    try:
        with pytest.raises(LomasError) as raised:
            peer.call("EstimateCost", executor_pb2.EstimateCostRequest(), timeout=0.3)
    finally:
        servicer.release.set()
        peer.close()
        server.stop()
    assert_peer_unavailable(raised.value, "executor")


def test_a_peer_that_goes_away_mid_call_is_backend_unavailable() -> None:
    servicer = BlockingExecutor()
    servicer.slow = True
    server = start_blocking_server(settings(grace=0.0), [executor_service(servicer)], threads=2)
    peer = SyncPeer(
        f"127.0.0.1:{server.port}", executor_pb2_grpc.ExecutorServiceStub, PeerSettings()
    )
    failures: list[LomasError] = []

    def call() -> None:
        try:
            peer.call("EstimateCost", executor_pb2.EstimateCostRequest(), timeout=10)
        except LomasError as error:
            failures.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)
    server.stop()  # no grace: the in-flight call is cut off
    caller.join(10)
    servicer.release.set()
    peer.close()
    (failure,) = failures
    assert_peer_unavailable(failure, "executor")


def test_errors_with_error_info_keep_code_reason_and_retry_advice() -> None:
    class Overloaded(EstimateCostOnly):
        def EstimateCost(
            self, request: executor_pb2.EstimateCostRequest, context: grpc.ServicerContext
        ) -> executor_pb2.EstimateCostResponse:
            raise BackendUnavailable(
                "the store is unavailable",
                peer="postgresql",
                metadata={"store": "db"},
                retry_after_seconds=2.5,
            )

    server = start_blocking_server(settings(), [executor_service(Overloaded())], threads=2)
    peer = SyncPeer(
        f"127.0.0.1:{server.port}", executor_pb2_grpc.ExecutorServiceStub, PeerSettings()
    )
    try:
        with pytest.raises(RemoteError) as raised:
            peer.call("EstimateCost", executor_pb2.EstimateCostRequest())
    finally:
        peer.close()
        server.stop()
    error = raised.value
    assert (error.code, error.reason) == (Code.UNAVAILABLE, "BACKEND_UNAVAILABLE")
    assert error.metadata == {"store": "db", "peer": "postgresql"}
    assert error.retry_after_seconds == 2.5


class FakeRpcError(grpc.RpcError):
    """A transport failure as gRPC reports it: a code, no rich status (pure unit test)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def trailing_metadata(self) -> tuple[()]:
        return ()


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "BACKEND_UNAVAILABLE"),
        (grpc.StatusCode.UNKNOWN, "INTERNAL"),
        (grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_failures_without_error_info_map_by_code(code: grpc.StatusCode, reason: str) -> None:
    error = from_rpc_error(FakeRpcError(code), peer="budget")
    assert error.reason == reason
    if reason == "BACKEND_UNAVAILABLE":
        assert_peer_unavailable(error, "budget")
    else:
        assert error.code == Code.INTERNAL and error.metadata == {}


def test_the_gateway_edge_answers_unavailable_with_retry_info_and_the_peer() -> None:
    """A gateway-like asyncio server whose handler calls a peer that is down."""
    target = f"127.0.0.1:{closed_port()}"

    class Forwarding(EstimateCostOnly):
        def __init__(self) -> None:
            self.peer = AsyncPeer(target, executor_pb2_grpc.ExecutorServiceStub, PeerSettings())

        async def EstimateCost(
            self,
            request: executor_pb2.EstimateCostRequest,
            context: grpc.aio.ServicerContext[
                executor_pb2.EstimateCostRequest, executor_pb2.EstimateCostResponse
            ],
        ) -> executor_pb2.EstimateCostResponse:
            response: executor_pb2.EstimateCostResponse = await self.peer.call(
                "EstimateCost", request
            )
            return response

    async def scenario() -> grpc.RpcError:
        forwarding = Forwarding()
        running = await start_server(settings(), [executor_service(forwarding)])
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = executor_pb2_grpc.ExecutorServiceStub(channel)
                try:
                    await stub.EstimateCost(executor_pb2.EstimateCostRequest(), timeout=5)
                except grpc.RpcError as error:
                    return error
                raise AssertionError("the call succeeded with its peer down")
        finally:
            await running.stop()
            await forwarding.peer.close()

    error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "BACKEND_UNAVAILABLE"
    assert dict(info.metadata) == {"peer": "executor"}
    retry = retry_info(error)
    assert retry is not None and retry.retry_delay.seconds == 1
