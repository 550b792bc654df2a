"""Thin servicer of the internal ExecutorService: validation, cost and dummy data. No private data.

Every call is free to its caller and parses what the caller wrote, so none runs in the server
process: the servicer hands the request's bytes to a child of the free-call pool
(`lomas_executor.sandbox`), which runs `free_call_handler` under memory and time limits and sends
back the response's bytes. This module imports no engine: `free_call_handler` imports them in the
child.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.errors import InvalidArgument
from lomas_executor.sandbox import FreeCallPool
from lomas_executor.settings import QueryLimits

if TYPE_CHECKING:
    from google.protobuf.message import Message


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, pool: FreeCallPool) -> None:
        self._pool = pool

    def _forward(
        self, method: str, request: Message, response_type: type[Message], context: Any
    ) -> Message:
        """Run `method` in a child, within the caller's deadline; killed if the caller leaves."""
        reply = self._pool.call(
            method,
            request.SerializeToString(),
            time_remaining=context.time_remaining(),
            is_active=context.is_active,
        )
        return response_type.FromString(reply)

    def ValidateDataset(self, request, context):  # type: ignore[no-untyped-def]
        return self._forward(
            "ValidateDataset", request, executor_pb2.ValidateDatasetResponse, context
        )

    def EstimateCost(self, request, context):  # type: ignore[no-untyped-def]
        return self._forward("EstimateCost", request, executor_pb2.EstimateCostResponse, context)

    def GetDummyDataset(self, request, context):  # type: ignore[no-untyped-def]
        return self._forward(
            "GetDummyDataset", request, executor_pb2.GetDummyDatasetResponse, context
        )

    def RunDummyQuery(self, request, context):  # type: ignore[no-untyped-def]
        return self._forward("RunDummyQuery", request, executor_pb2.RunDummyQueryResponse, context)


def free_call_handler(limits: QueryLimits) -> Callable[[str, bytes], bytes]:
    """What a child of the free-call pool runs: request bytes in, response bytes out."""
    # In the child only (see the module docstring).
    from lomas_common.convert import privacy_loss_to_proto
    from lomas_executor import convert
    from lomas_executor.arrow_ipc import frame_to_ipc
    from lomas_executor.cache import DatasetCache
    from lomas_executor.engine import QueryEngine

    # The executor service never loads private data: its cache stays empty.
    engine = QueryEngine(DatasetCache(max_bytes=0), limits=limits)

    def validate_dataset(request: executor_pb2.ValidateDatasetRequest) -> Message:
        descriptor = convert.normalised_descriptor(request.dataset)
        return executor_pb2.ValidateDatasetResponse(dataset=descriptor)

    def estimate_cost(request: executor_pb2.EstimateCostRequest) -> Message:
        dataset = convert.dataset_from_proto(request.dataset)
        query = convert.query_from_proto(request.query)
        cost = engine.estimate_cost(query, dataset)
        return executor_pb2.EstimateCostResponse(cost=privacy_loss_to_proto(cost))

    def get_dummy_dataset(request: executor_pb2.GetDummyDatasetRequest) -> Message:
        dataset = convert.dataset_from_proto(request.dataset)
        frame = engine.dummy_frame(dataset, request.row_count, request.seed)
        return executor_pb2.GetDummyDatasetResponse(arrow_ipc=frame_to_ipc(frame))

    def run_dummy_query(request: executor_pb2.RunDummyQueryRequest) -> Message:
        dataset = convert.dataset_from_proto(request.dataset)
        query = convert.query_from_proto(request.query)
        cost = engine.estimate_cost(query, dataset)
        frame = engine.run_dummy(query, dataset, request.row_count, request.seed)
        return executor_pb2.RunDummyQueryResponse(
            arrow_ipc=frame_to_ipc(frame), cost=privacy_loss_to_proto(cost)
        )

    calls: dict[str, tuple[type[Message], Callable[[Any], Message]]] = {
        "ValidateDataset": (executor_pb2.ValidateDatasetRequest, validate_dataset),
        "EstimateCost": (executor_pb2.EstimateCostRequest, estimate_cost),
        "GetDummyDataset": (executor_pb2.GetDummyDatasetRequest, get_dummy_dataset),
        "RunDummyQuery": (executor_pb2.RunDummyQueryRequest, run_dummy_query),
    }

    def handle(method: str, request: bytes) -> bytes:
        if method not in calls:
            raise InvalidArgument(f"unknown free call {method!r}")
        request_type, behaviour = calls[method]
        try:
            message = request_type.FromString(request)
        except DecodeError:
            raise InvalidArgument("the request could not be decoded") from None
        return behaviour(message).SerializeToString()

    return handle
