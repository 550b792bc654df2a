"""Requests whose bytes do not decode: INVALID_ARGUMENT with reason REQUEST_UNDECODABLE, on both
server kinds, sent raw over a real channel to a real server on port 0."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from common_testing import (
    ESTIMATE_COST,
    GARBAGE,
    HEALTH_CHECK,
    AsyncExecutor,
    BlockingExecutor,
    settings,
)
from grpc_health.v1 import health_pb2

from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.blocking_server import start_blocking_server
from lomas_common.errors import ERROR_DOMAIN
from lomas_common.server import CallOutcome, Service, start_server
from lomas_testing.rich_status import error_info

TOKEN = "peer-secret"


def raw_call(port: int, method: str, payload: bytes, token: str = "") -> grpc.RpcError | bytes:
    """Send `payload` as the request bytes of `method`; the error, or the response bytes."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            method, request_serializer=None, response_deserializer=None
        )
        metadata = (("x-lomas-service-token", token),) if token else None
        try:
            return bytes(call(payload, timeout=5, metadata=metadata))
        except grpc.RpcError as error:
            return error


def assert_undecodable(outcome: grpc.RpcError | bytes, method: str) -> None:
    assert isinstance(outcome, grpc.RpcError), outcome
    assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(outcome)
    assert (info.reason, info.domain) == ("REQUEST_UNDECODABLE", ERROR_DOMAIN)
    assert info.metadata["method"] == method


def executor_service(servicer: object) -> Service:
    return Service(
        executor_pb2_grpc.add_ExecutorServiceServicer_to_server,
        servicer,
        "lomas.executor.v1.ExecutorService",
    )


def test_blocking_server_refuses_undecodable_requests_with_error_info() -> None:
    server = start_blocking_server(
        settings(TOKEN), [executor_service(BlockingExecutor())], threads=2
    )
    try:
        assert_undecodable(raw_call(server.port, ESTIMATE_COST, GARBAGE, TOKEN), ESTIMATE_COST)
        # Health is not edged (no token needed) but refuses garbage the same way.
        assert_undecodable(raw_call(server.port, HEALTH_CHECK, GARBAGE), HEALTH_CHECK)
        # The peer check comes first: a stranger learns nothing about decoding.
        stranger = raw_call(server.port, ESTIMATE_COST, GARBAGE)
        assert isinstance(stranger, grpc.RpcError)
        assert stranger.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(stranger).reason == "PEER_CREDENTIAL_REQUIRED"
        # Well-formed requests still work.
        valid = executor_pb2.EstimateCostRequest().SerializeToString()
        assert raw_call(server.port, ESTIMATE_COST, valid, TOKEN) == b""
        health = raw_call(server.port, HEALTH_CHECK, b"")
        assert isinstance(health, bytes)
        assert (
            health_pb2.HealthCheckResponse.FromString(health).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        server.stop()


def test_asyncio_server_refuses_undecodable_requests_with_error_info() -> None:
    outcomes: list[CallOutcome] = []

    async def observe(outcome: CallOutcome) -> None:
        outcomes.append(outcome)

    async def scenario() -> None:
        running = await start_server(
            settings(TOKEN), [executor_service(AsyncExecutor())], observer=observe
        )
        try:
            loop = asyncio.get_running_loop()

            async def call(method: str, payload: bytes, token: str = "") -> grpc.RpcError | bytes:
                return await loop.run_in_executor(
                    None, raw_call, running.port, method, payload, token
                )

            assert_undecodable(await call(ESTIMATE_COST, GARBAGE, TOKEN), ESTIMATE_COST)
            assert_undecodable(await call(HEALTH_CHECK, GARBAGE), HEALTH_CHECK)
            stranger = await call(ESTIMATE_COST, GARBAGE)
            assert isinstance(stranger, grpc.RpcError)
            assert stranger.code() == grpc.StatusCode.PERMISSION_DENIED
            valid = executor_pb2.EstimateCostRequest().SerializeToString()
            assert await call(ESTIMATE_COST, valid, TOKEN) == b""
        finally:
            await running.stop()

    asyncio.run(scenario())
    # The observer (an audit trail) sees the refusal, with an empty request of the method's type.
    first = outcomes[0]
    assert (first.method, first.code, first.reason) == (
        ESTIMATE_COST,
        "INVALID_ARGUMENT",
        "REQUEST_UNDECODABLE",
    )
    assert first.request == executor_pb2.EstimateCostRequest()
    assert [o.code for o in outcomes] == ["INVALID_ARGUMENT", "PERMISSION_DENIED", "OK"]


@pytest.mark.parametrize("payload", [b"\x0a", b"\x0a\x05ab", b"\x80"])
def test_truncated_messages_are_undecodable_too(payload: bytes) -> None:
    server = start_blocking_server(settings(), [executor_service(BlockingExecutor())], threads=2)
    try:
        assert_undecodable(raw_call(server.port, ESTIMATE_COST, payload), ESTIMATE_COST)
    finally:
        server.stop()
