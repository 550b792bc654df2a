"""What a child of the free-call pool runs: a request's bytes in, its response's bytes out.

Only the children of `lomas_executor.sandbox.FreeCallPool` import this module (it loads the engines:
Polars, OpenDP, smartnoise-sql); the server process never does. The executor service never loads
private data: the engine's dataset cache stays empty, and ValidateDataset reads only a source's
structure (a CSV header, a Parquet footer: see `lomas_executor.source_validation`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from lomas.executor.v1 import executor_pb2
from lomas_common.convert import privacy_loss_to_proto
from lomas_common.errors import InvalidArgument
from lomas_common.privacy import PrivacyLoss
from lomas_executor import convert
from lomas_executor.arrow_ipc import frame_to_ipc
from lomas_executor.cache import DatasetCache
from lomas_executor.engine import DatasetRef, Query, QueryEngine
from lomas_executor.settings import QueryLimits
from lomas_executor.source_validation import check_dataset_source
from lomas_executor.sources import S3Secrets

RequestT = TypeVar("RequestT", bound=Message)
Handler = Callable[[str, bytes], bytes]


class FreeCalls:
    """The free calls of ExecutorService, on an engine that never loads data."""

    def __init__(self, limits: QueryLimits, s3_secrets: S3Secrets | None = None) -> None:
        self._engine = QueryEngine(DatasetCache(max_bytes=0), limits=limits)
        self._s3_secrets = s3_secrets or S3Secrets()

    def validate_dataset(
        self, request: executor_pb2.ValidateDatasetRequest
    ) -> executor_pb2.ValidateDatasetResponse:
        descriptor = convert.normalised_descriptor(request.dataset)
        # Nothing is registered that workers could not load: the source must exist, be readable
        # with its credentials and have the metadata's columns.
        dataset = convert.dataset_from_proto(descriptor)
        check_dataset_source(dataset.source, dataset.fmt, dataset.metadata, self._s3_secrets)
        return executor_pb2.ValidateDatasetResponse(dataset=descriptor)

    def estimate_cost(
        self, request: executor_pb2.EstimateCostRequest
    ) -> executor_pb2.EstimateCostResponse:
        dataset, query, cost = self._costed_query(request)
        sql = self._engine.canonical_sql(query, dataset)  # worked out with the cost: no new parse
        return executor_pb2.EstimateCostResponse(
            cost=privacy_loss_to_proto(cost),
            canonical_query=convert.canonical_query(request.query, sql),
        )

    def estimate_accuracy(
        self, request: executor_pb2.EstimateAccuracyRequest
    ) -> executor_pb2.EstimateAccuracyResponse:
        dataset = convert.dataset_from_proto(request.dataset)
        query = convert.query_from_proto(request.query)
        columns = self._engine.estimate_accuracy(
            query, dataset, convert.alpha_from_text(request.alpha)
        )
        return executor_pb2.EstimateAccuracyResponse(
            columns=[convert.column_accuracy_to_proto(column) for column in columns]
        )

    def get_dummy_dataset(
        self, request: executor_pb2.GetDummyDatasetRequest
    ) -> executor_pb2.GetDummyDatasetResponse:
        dataset = convert.dataset_from_proto(request.dataset)
        frame = self._engine.dummy_frame(dataset, request.row_count, request.seed)
        return executor_pb2.GetDummyDatasetResponse(arrow_ipc=frame_to_ipc(frame))

    def run_dummy_query(
        self, request: executor_pb2.RunDummyQueryRequest
    ) -> executor_pb2.RunDummyQueryResponse:
        dataset, query, cost = self._costed_query(request)
        frame = self._engine.run_dummy(query, dataset, request.row_count, request.seed)
        return executor_pb2.RunDummyQueryResponse(
            arrow_ipc=frame_to_ipc(frame), cost=privacy_loss_to_proto(cost)
        )

    def _costed_query(
        self, request: executor_pb2.EstimateCostRequest | executor_pb2.RunDummyQueryRequest
    ) -> tuple[DatasetRef, Query, PrivacyLoss]:
        """The request's dataset and query, and the query's cost (estimating it validates it)."""
        dataset = convert.dataset_from_proto(request.dataset)
        query = convert.query_from_proto(request.query)
        return dataset, query, self._engine.estimate_cost(query, dataset)


def _on_bytes(
    request_type: type[RequestT], behaviour: Callable[[RequestT], Message]
) -> Callable[[bytes], bytes]:
    """`behaviour` on a request's bytes; bytes no request decodes are INVALID_ARGUMENT."""

    def run(data: bytes) -> bytes:
        try:
            request = request_type.FromString(data)
        except DecodeError:
            raise InvalidArgument("the request could not be decoded") from None
        return behaviour(request).SerializeToString()

    return run


def free_call_handler(limits: QueryLimits, s3_secrets: S3Secrets | None = None) -> Handler:
    """The child's handler: the method's name and the request's bytes in, the response's out."""
    calls = FreeCalls(limits, s3_secrets)
    by_method = {
        "ValidateDataset": _on_bytes(executor_pb2.ValidateDatasetRequest, calls.validate_dataset),
        "EstimateCost": _on_bytes(executor_pb2.EstimateCostRequest, calls.estimate_cost),
        "EstimateAccuracy": _on_bytes(
            executor_pb2.EstimateAccuracyRequest, calls.estimate_accuracy
        ),
        "GetDummyDataset": _on_bytes(executor_pb2.GetDummyDatasetRequest, calls.get_dummy_dataset),
        "RunDummyQuery": _on_bytes(executor_pb2.RunDummyQueryRequest, calls.run_dummy_query),
    }

    def handle(method: str, request: bytes) -> bytes:
        if method not in by_method:
            raise InvalidArgument(f"unknown free call {method!r}")
        return by_method[method](request)

    return handle
