"""Calling mesh peers: channels with size limits, the service credential, request-id propagation,
telemetry, and peer errors turned back into `LomasError`s (same code, same reason).

A peer that is down or restarting (connection refused, connection lost mid-call, no answer in time)
becomes UNAVAILABLE with reason BACKEND_UNAVAILABLE, a RetryInfo and `peer: <name>` in the ErrorInfo
metadata, so a caller of the gateway knows to retry and what was missing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from lomas_common.rpc_errors import from_rpc_error
from lomas_common.server import REQUEST_ID_HEADER, SERVICE_TOKEN_HEADER, request_id_var
from lomas_common.telemetry import client_interceptors, traced_channel

# Covariant: a peer built from `XServiceStub` on an asyncio channel holds the generated
# `XServiceAsyncStub` (a subclass), and is still a peer of `XServiceStub` to its users.
StubT = TypeVar("StubT", covariant=True)

DEFAULT_TIMEOUT_SECONDS = 30.0
HEALTH_CHECK_TIMEOUT_SECONDS = 1.0
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

# Reconnect quickly to a peer that went away: peers are on the same machine or cluster, and a
# supervised restart takes seconds. gRPC's defaults (1 s growing to 120 s) would keep a channel
# failing long after its peer is back.
INITIAL_RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 2000


@dataclass(frozen=True)
class PeerSettings:
    """How to reach the mesh: the shared service token, message limits and telemetry."""

    service_token: str = ""
    max_message_bytes: int = 64 * 1024 * 1024
    otel_exporter: str = "none"


def _channel_options(settings: PeerSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]


def _call_metadata(settings: PeerSettings) -> list[tuple[str, str]]:
    metadata = []
    if settings.service_token:
        metadata.append((SERVICE_TOKEN_HEADER, settings.service_token))
    request_id = request_id_var.get()
    if request_id:
        metadata.append((REQUEST_ID_HEADER, request_id))
    return metadata


def peer_name(stub_class: Callable[..., object]) -> str:
    """The peer a stub calls, from its generated module (`lomas.executor.v1...` -> "executor")."""
    parts = stub_class.__module__.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "lomas" else stub_class.__name__


# The health check, called by method name: the stubs of grpcio-health-checking declare `HealthStub`
# without its methods, so a typed multi-callable is built here instead.
def health_check(
    channel: grpc.Channel,
) -> grpc.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]:
    """The Health/Check method of the server behind a blocking channel."""
    return channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


def _async_health_check(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]:
    return channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


class AsyncPeer(Generic[StubT]):
    """An asyncio client of one peer service. `name` (default: from the stub's package, e.g.
    "executor") names the peer in BACKEND_UNAVAILABLE errors and health reports."""

    def __init__(
        self,
        target: str,
        stub_class: Callable[[grpc.aio.Channel], StubT],
        settings: PeerSettings,
        name: str = "",
    ) -> None:
        self._settings = settings
        self.name = name or peer_name(stub_class)
        self.channel = grpc.aio.insecure_channel(
            target,
            options=_channel_options(settings),
            interceptors=client_interceptors(settings.otel_exporter),
        )
        self.stub: StubT = stub_class(self.channel)
        self._health_check = _async_health_check(self.channel)

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        try:
            return await getattr(self.stub, method)(
                request,
                metadata=_call_metadata(self._settings),
                timeout=timeout or DEFAULT_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, peer=self.name) from None

    async def serving(self) -> bool:
        """Whether the peer answers its health check with SERVING (a dependency of `start_server`)."""
        try:
            response = await self._health_check(
                health_pb2.HealthCheckRequest(), timeout=HEALTH_CHECK_TIMEOUT_SECONDS
            )
        except grpc.RpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self.channel.close()


class SyncPeer(Generic[StubT]):
    """A blocking client of one peer service (for Celery workers)."""

    def __init__(
        self,
        target: str,
        stub_class: Callable[[grpc.Channel], StubT],
        settings: PeerSettings,
        name: str = "",
    ) -> None:
        self._settings = settings
        self.name = name or peer_name(stub_class)
        self.channel = traced_channel(
            settings.otel_exporter,
            grpc.insecure_channel(target, options=_channel_options(settings)),
        )
        self.stub: StubT = stub_class(self.channel)

    def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(
                request,
                metadata=_call_metadata(self._settings),
                timeout=timeout or DEFAULT_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, peer=self.name) from None

    def close(self) -> None:
        self.channel.close()
