"""Shared test helpers: tiny executor servicers (sync and asyncio) and rich-status readers."""

from __future__ import annotations

import threading
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.settings import ServerSettings

EXECUTOR = "lomas.executor.v1.ExecutorService"
ESTIMATE_COST = f"/{EXECUTOR}/EstimateCost"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
GARBAGE = b"\xff\xff\xff\xff\x07\x07"  # field 31 with wire type 7: no message decodes it


def settings(service_token: str = "", grace: float = 0.0) -> ServerSettings:
    return ServerSettings(
        listen="127.0.0.1:0",
        max_message_bytes=1024 * 1024,
        grace_seconds=grace,
        otel_exporter="none",
        log_level="INFO",
        service_token=service_token,
        threads=4,
    )


class BlockingExecutor(executor_pb2_grpc.ExecutorServiceServicer):
    """Answers EstimateCost with an empty response; `release` lets a slow call finish."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.slow = False

    def EstimateCost(self, request: Any, context: Any) -> executor_pb2.EstimateCostResponse:
        if self.slow:
            self.release.wait(10)
        return executor_pb2.EstimateCostResponse()


class AsyncExecutor(executor_pb2_grpc.ExecutorServiceServicer):
    async def EstimateCost(self, request: Any, context: Any) -> executor_pb2.EstimateCostResponse:
        return executor_pb2.EstimateCostResponse()


def status_of(error: grpc.RpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no rich status in {error!r}")


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    for detail in status_of(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    for detail in status_of(error).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return retry
    return None


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
