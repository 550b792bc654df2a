"""The one error model of Lomas mesh, free of gRPC.

Domain code raises a `LomasError` subclass; each declares its status code (by gRPC name) and its
`ErrorInfo.reason`. One server interceptor turns it into a `google.rpc.Status`; the Python client turns
the reason back into a typed exception. Messages describe schema and parameters, never data values.

Every reason is a value of the registry `lomas.common.v1.ErrorReason` (its name without the
`ERROR_REASON_` prefix): a `LomasError` with any other reason cannot be built, so no caller ever
receives a reason the contracts do not declare.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

from lomas.common.v1 import error_reason_pb2

_REASON_PREFIX = "ERROR_REASON_"
# Every reason a caller can receive (the registry enum's value names, without the prefix).
REASONS: frozenset[str] = frozenset(
    name.removeprefix(_REASON_PREFIX)
    for name in error_reason_pb2.ErrorReason.keys()
    if name != "ERROR_REASON_UNSPECIFIED"
)


def reason_of(value: error_reason_pb2.ErrorReason.ValueType) -> str:
    """The `ErrorInfo.reason` of a registry value (`error_reason_pb2.ERROR_REASON_QUERY_INVALID`
    -> "QUERY_INVALID")."""
    return error_reason_pb2.ErrorReason.Name(value).removeprefix(_REASON_PREFIX)


class UnregisteredReason(ValueError):
    """A programming error: a reason that `lomas.common.v1.ErrorReason` does not declare, or a
    metadata key that is not lowerCamel (the registry's rule: one value per lowerCamel key)."""


_METADATA_KEY = re.compile(r"[a-z][a-zA-Z0-9]*\Z")


ERROR_DOMAIN = "lomas.mesh"


class Code(enum.Enum):
    """The gRPC status codes the platform uses, by name (mapped to grpc.StatusCode at the edge)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


class LomasError(Exception):
    """Base of every error the platform reports to a caller."""

    code: Code = Code.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if self.reason not in REASONS:
            raise UnregisteredReason(
                f"{self.reason!r} is not in lomas.common.v1.ErrorReason: declare it there first"
            )
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items()}
        for key in self.metadata:
            if not _METADATA_KEY.match(key):
                raise UnregisteredReason(f"error metadata key {key!r} is not lowerCamel")
        self.retry_after_seconds = retry_after_seconds


class InvalidArgument(LomasError):
    code = Code.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class InvalidQuery(InvalidArgument):
    reason = "QUERY_INVALID"


class InvalidMetadata(InvalidArgument):
    reason = "METADATA_INVALID"


class NotFound(LomasError):
    code = Code.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(LomasError):
    code = Code.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class PermissionDenied(LomasError):
    code = Code.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class DatasetAccessDenied(PermissionDenied):
    reason = "DATASET_ACCESS_DENIED"


class AdminRoleRequired(PermissionDenied):
    reason = "ADMIN_ROLE_REQUIRED"


class Unauthenticated(LomasError):
    code = Code.UNAUTHENTICATED
    reason = "TOKEN_INVALID"


class BudgetExhausted(LomasError):
    code = Code.RESOURCE_EXHAUSTED
    reason = "PRIVACY_BUDGET_EXHAUSTED"


class RateLimited(LomasError):
    code = Code.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"


class TooManyConcurrentQueries(LomasError):
    code = Code.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_CONCURRENT_QUERIES"


class FailedPrecondition(LomasError):
    code = Code.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Conflict(LomasError):
    code = Code.ABORTED
    reason = "CONFLICT"


class BackendUnavailable(LomasError):
    code = Code.UNAVAILABLE
    reason = "BACKEND_UNAVAILABLE"


class QueryTimeout(LomasError):
    code = Code.DEADLINE_EXCEEDED
    reason = "QUERY_TIMEOUT"


class ExecutionFailed(LomasError):
    """A query failed after touching data: the charge is kept, the message carries no data values."""

    code = Code.INTERNAL
    reason = "QUERY_EXECUTION_FAILED"
