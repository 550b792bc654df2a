"""Typed exceptions, chosen by the server's `ErrorInfo.reason` (and, failing that, by status code)."""

from __future__ import annotations

from decimal import Decimal

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lomas.common.v1 import error_reason_pb2


class LomasError(Exception):
    """An error reported by the platform."""

    def __init__(self, code: str, reason: str, message: str, metadata: dict[str, str]) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata


class Unauthenticated(LomasError):
    """No token, or a token that is expired, malformed or not signed by the trusted issuer."""


class AccessDenied(LomasError):
    """No grant on the dataset, querying suspended, or an admin call without the admin role."""


class BudgetExhausted(LomasError):
    """The query costs more than what is left; `metadata` has `requested` and `remaining`."""


class LimitExceeded(LomasError):
    """Too many requests or concurrent queries for your user; retry after `RetryInfo` (nothing spent)."""


class InvalidQuery(LomasError):
    """The query is not valid for the dataset's metadata (nothing was spent)."""


class InvalidArgument(LomasError):
    """A parameter is malformed or out of range (nothing was spent)."""


class NotFound(LomasError):
    """The named resource does not exist."""


class AlreadyExists(LomasError):
    """A different resource with that name exists."""


class BackendUnavailable(LomasError):
    """A platform service is down; retrying later (with the same request id) is safe. `metadata`
    names it under "peer" ("gateway" when the platform did not answer at all)."""


class QueryTimeout(LomasError):
    """The query did not finish in time; retry with the same request id to collect its release."""


class ExecutionFailed(LomasError):
    """The query failed after touching data; its cost is charged (no refund after data access).
    Retrying with the same request id returns this same failure, and charges nothing more."""

    @property
    def charged(self) -> dict[str, Decimal]:
        """What the failed query was charged, e.g. `{"epsilon": Decimal("1"), "delta": ...}`
        (from the error's `chargedEpsilon`, `chargedDelta` or `chargedRho` metadata)."""
        return {
            key.removeprefix("charged").lower(): Decimal(value)
            for key, value in self.metadata.items()
            if key.startswith("charged")
        }


class TimeLimitExceeded(ExecutionFailed):
    """The query ran past its worker's time limit after touching data; its cost is charged (see
    `charged`). Not `QueryTimeout`: there is nothing left to collect."""


class PoolUnavailable(LomasError):
    """The query needs a worker pool this platform has not installed (the GAN synthesizers need
    the heavy pool, `metadata["pool"]`); nothing was charged. Use another synthesizer, or ask the
    operator for the pool."""


class SourceUnavailable(LomasError):
    """The dataset's data cannot be read (a missing file or object, credentials the workers do not
    hold); nothing touched data, so nothing is charged. An administrator must fix the source."""


class QueryCancelled(LomasError):
    """The query was cancelled before it touched the data: its reservation was returned in full
    and nothing was released."""


class DataAccessed(LomasError):
    """Too late to cancel: a worker already touched the data, so the query runs to its end and its
    charge stands (there is no refund after data access)."""


class CostMismatch(LomasError):
    """The worker's cost of the query differed from what was reserved: nothing ran, nothing was
    charged; sending the query again prices it anew."""


# Typed exceptions by registry value (`lomas.common.v1.ErrorReason`); reasons not named here map by
# their gRPC code below.
_R = error_reason_pb2
_BY_REGISTRY: dict[error_reason_pb2.ErrorReason.ValueType, type[LomasError]] = {
    _R.ERROR_REASON_PRIVACY_BUDGET_EXHAUSTED: BudgetExhausted,
    _R.ERROR_REASON_DATASET_CAP_EXHAUSTED: BudgetExhausted,
    _R.ERROR_REASON_QUERY_INVALID: InvalidQuery,
    _R.ERROR_REASON_QUERY_TOO_LONG: InvalidQuery,
    _R.ERROR_REASON_QUERY_LIMIT_EXCEEDED: InvalidQuery,
    _R.ERROR_REASON_GROUP_KEYS_NOT_PUBLIC: InvalidQuery,
    _R.ERROR_REASON_OPENDP_PIPELINE_REFUSED: InvalidQuery,
    _R.ERROR_REASON_OPENDP_INPUT_DOMAIN_MISMATCH: InvalidQuery,
    _R.ERROR_REASON_DIFFPRIVLIB_PIPELINE_REFUSED: InvalidQuery,
    _R.ERROR_REASON_DIFFPRIVLIB_PRIVACY_LEAK: InvalidQuery,
    _R.ERROR_REASON_DELTA_REQUIRED: InvalidQuery,
    _R.ERROR_REASON_SYNTHESIZER_REFUSED: InvalidQuery,
    _R.ERROR_REASON_HEAVY_POOL_UNAVAILABLE: PoolUnavailable,
    _R.ERROR_REASON_DELTA_TOO_LARGE: InvalidQuery,
    _R.ERROR_REASON_QUERY_TIMEOUT: QueryTimeout,
    _R.ERROR_REASON_QUERY_EXECUTION_FAILED: ExecutionFailed,
    _R.ERROR_REASON_QUERY_TIME_LIMIT_EXCEEDED: TimeLimitExceeded,
    _R.ERROR_REASON_BACKEND_UNAVAILABLE: BackendUnavailable,
    _R.ERROR_REASON_RATE_LIMITED: LimitExceeded,
    _R.ERROR_REASON_TOO_MANY_CONCURRENT_QUERIES: LimitExceeded,
    _R.ERROR_REASON_TOO_MANY_CONCURRENT_CALLS: LimitExceeded,
    _R.ERROR_REASON_FREE_CALL_LIMIT_EXCEEDED: LimitExceeded,
    _R.ERROR_REASON_FREE_CALLS_BUSY: LimitExceeded,
    _R.ERROR_REASON_COST_MISMATCH: CostMismatch,
    _R.ERROR_REASON_DATASET_SOURCE_UNAVAILABLE: SourceUnavailable,
    _R.ERROR_REASON_QUERY_CANCELLED: QueryCancelled,
    _R.ERROR_REASON_DATA_ACCESSED: DataAccessed,
}
_BY_REASON: dict[str, type[LomasError]] = {
    _R.ErrorReason.Name(value).removeprefix("ERROR_REASON_"): cls
    for value, cls in _BY_REGISTRY.items()
}
_BY_CODE: dict[grpc.StatusCode, type[LomasError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: AccessDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: LimitExceeded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAVAILABLE: BackendUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: QueryTimeout,
    grpc.StatusCode.CANCELLED: QueryCancelled,
}


def from_rpc_error(error: grpc.RpcError) -> LomasError:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = error.details() if isinstance(error, grpc.Call) else str(error)
    reason, metadata = code.name, dict[str, str]()
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if status is not None:
        message = status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    if code is grpc.StatusCode.UNAVAILABLE and "peer" not in metadata:
        # No ErrorInfo: the platform did not answer at all, so the gateway (or the proxy in front
        # of it) is what was unavailable. Every outage the platform reports names its own peer.
        metadata["peer"] = "gateway"
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, LomasError)
    return cls(code.name, reason, message or "", metadata)
