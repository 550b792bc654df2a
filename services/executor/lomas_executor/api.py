"""Thin servicer of the internal ExecutorService: validation, cost and dummy data. No private data.

Every call is free to its caller and parses what the caller wrote, so none runs in the server
process: the servicer hands the request's bytes to a child of the free-call pool
(`lomas_executor.sandbox`), which runs `lomas_executor.free_calls` under memory and time limits and
sends back the response's bytes. This module imports no engine.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import Message

from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_executor.sandbox import FreeCallPool

ResponseT = TypeVar("ResponseT", bound=Message)


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, pool: FreeCallPool) -> None:
        self._pool = pool

    def _forward(
        self,
        method: str,
        request: Message,
        response_type: type[ResponseT],
        context: grpc.ServicerContext,
    ) -> ResponseT:
        """Run `method` in a child, within the caller's deadline; killed if the caller leaves."""
        reply = self._pool.call(
            method,
            request.SerializeToString(),
            time_remaining=context.time_remaining(),
            is_active=context.is_active,
        )
        return response_type.FromString(reply)

    def ValidateDataset(
        self, request: executor_pb2.ValidateDatasetRequest, context: grpc.ServicerContext
    ) -> executor_pb2.ValidateDatasetResponse:
        return self._forward(
            "ValidateDataset", request, executor_pb2.ValidateDatasetResponse, context
        )

    def EstimateCost(
        self, request: executor_pb2.EstimateCostRequest, context: grpc.ServicerContext
    ) -> executor_pb2.EstimateCostResponse:
        return self._forward("EstimateCost", request, executor_pb2.EstimateCostResponse, context)

    def GetDummyDataset(
        self, request: executor_pb2.GetDummyDatasetRequest, context: grpc.ServicerContext
    ) -> executor_pb2.GetDummyDatasetResponse:
        return self._forward(
            "GetDummyDataset", request, executor_pb2.GetDummyDatasetResponse, context
        )

    def RunDummyQuery(
        self, request: executor_pb2.RunDummyQueryRequest, context: grpc.ServicerContext
    ) -> executor_pb2.RunDummyQueryResponse:
        return self._forward("RunDummyQuery", request, executor_pb2.RunDummyQueryResponse, context)
