"""Thin servicer of the internal ExecutorService: validation, cost and dummy data. No private data."""

from __future__ import annotations

from lomas.executor.v1 import executor_pb2, executor_pb2_grpc
from lomas_common.convert import privacy_loss_to_proto
from lomas_executor import convert
from lomas_executor.arrow_ipc import frame_to_ipc
from lomas_executor.engine import QueryEngine


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, engine: QueryEngine) -> None:
        self._engine = engine

    def ValidateDataset(self, request, context):  # type: ignore[no-untyped-def]
        descriptor = convert.normalised_descriptor(request.dataset)
        return executor_pb2.ValidateDatasetResponse(dataset=descriptor)

    def EstimateCost(self, request, context):  # type: ignore[no-untyped-def]
        dataset = convert.dataset_from_proto(request.dataset)
        query = convert.query_from_proto(request.query)
        cost = self._engine.estimate_cost(query, dataset)
        return executor_pb2.EstimateCostResponse(cost=privacy_loss_to_proto(cost))

    def GetDummyDataset(self, request, context):  # type: ignore[no-untyped-def]
        dataset = convert.dataset_from_proto(request.dataset)
        frame = self._engine.dummy_frame(dataset, request.row_count, request.seed)
        return executor_pb2.GetDummyDatasetResponse(arrow_ipc=frame_to_ipc(frame))

    def RunDummyQuery(self, request, context):  # type: ignore[no-untyped-def]
        dataset = convert.dataset_from_proto(request.dataset)
        query = convert.query_from_proto(request.query)
        cost = self._engine.estimate_cost(query, dataset)
        frame = self._engine.run_dummy(query, dataset, request.row_count, request.seed)
        return executor_pb2.RunDummyQueryResponse(
            arrow_ipc=frame_to_ipc(frame), cost=privacy_loss_to_proto(cost)
        )
