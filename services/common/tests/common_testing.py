"""Shared test helpers: tiny executor servicers (sync and asyncio), settings, a closed port."""

from __future__ import annotations

import threading
from typing import NoReturn

import grpc

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


class EstimateCostOnly(executor_pb2_grpc.ExecutorServiceServicer):
    """The base of test servicers that implement EstimateCost alone: the other methods answer
    UNIMPLEMENTED, as the generated base does at run time (its typed stubs declare them abstract)."""

    def _unimplemented(self, context: grpc.ServicerContext) -> NoReturn:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "this test servicer answers EstimateCost only")

    def ValidateDataset(
        self, request: executor_pb2.ValidateDatasetRequest, context: grpc.ServicerContext
    ) -> executor_pb2.ValidateDatasetResponse:
        self._unimplemented(context)

    def EstimateAccuracy(
        self, request: executor_pb2.EstimateAccuracyRequest, context: grpc.ServicerContext
    ) -> executor_pb2.EstimateAccuracyResponse:
        self._unimplemented(context)

    def GetDummyDataset(
        self, request: executor_pb2.GetDummyDatasetRequest, context: grpc.ServicerContext
    ) -> executor_pb2.GetDummyDatasetResponse:
        self._unimplemented(context)

    def RunDummyQuery(
        self, request: executor_pb2.RunDummyQueryRequest, context: grpc.ServicerContext
    ) -> executor_pb2.RunDummyQueryResponse:
        self._unimplemented(context)


class BlockingExecutor(EstimateCostOnly):
    """Answers EstimateCost with an empty response; `release` lets a slow call finish (the other
    methods are UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.slow = False

    def EstimateCost(
        self, request: executor_pb2.EstimateCostRequest, context: grpc.ServicerContext
    ) -> executor_pb2.EstimateCostResponse:
        if self.slow:
            self.release.wait(10)
        return executor_pb2.EstimateCostResponse()


class AsyncExecutor(EstimateCostOnly):
    """Answers EstimateCost with an empty response, on an asyncio server."""

    async def EstimateCost(
        self,
        request: executor_pb2.EstimateCostRequest,
        context: grpc.aio.ServicerContext[
            executor_pb2.EstimateCostRequest, executor_pb2.EstimateCostResponse
        ],
    ) -> executor_pb2.EstimateCostResponse:
        return executor_pb2.EstimateCostResponse()


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
