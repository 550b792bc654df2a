"""Calling mesh peers: channels with size limits, the service credential, request-id propagation,
telemetry, and peer errors turned back into `LomasError`s (same code, same reason)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from lomas_common.rpc_errors import from_rpc_error
from lomas_common.server import REQUEST_ID_HEADER, SERVICE_TOKEN_HEADER, request_id_var
from lomas_common.telemetry import client_interceptors

StubT = TypeVar("StubT")

DEFAULT_TIMEOUT_SECONDS = 30.0


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
    ]


def _call_metadata(settings: PeerSettings) -> list[tuple[str, str]]:
    metadata = []
    if settings.service_token:
        metadata.append((SERVICE_TOKEN_HEADER, settings.service_token))
    request_id = request_id_var.get()
    if request_id:
        metadata.append((REQUEST_ID_HEADER, request_id))
    return metadata


class AsyncPeer(Generic[StubT]):
    """An asyncio client of one peer service."""

    def __init__(self, target: str, stub_class: type[StubT], settings: PeerSettings) -> None:
        self._settings = settings
        self.channel = grpc.aio.insecure_channel(
            target,
            options=_channel_options(settings),
            interceptors=client_interceptors(settings.otel_exporter),
        )
        self.stub: StubT = stub_class(self.channel)  # type: ignore[call-arg]

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        try:
            return await getattr(self.stub, method)(
                request,
                metadata=_call_metadata(self._settings),
                timeout=timeout or DEFAULT_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def close(self) -> None:
        await self.channel.close()


class SyncPeer(Generic[StubT]):
    """A blocking client of one peer service (for Celery workers)."""

    def __init__(self, target: str, stub_class: type[StubT], settings: PeerSettings) -> None:
        self._settings = settings
        self.channel = grpc.insecure_channel(target, options=_channel_options(settings))
        self.stub: StubT = stub_class(self.channel)  # type: ignore[call-arg]

    def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(
                request,
                metadata=_call_metadata(self._settings),
                timeout=timeout or DEFAULT_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def close(self) -> None:
        self.channel.close()
