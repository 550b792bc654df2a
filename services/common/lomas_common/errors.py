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
from typing import Any

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

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[Any]) -> str:
        return name  # each value is its member's name: `Code.NOT_FOUND.value == "NOT_FOUND"`

    INVALID_ARGUMENT = enum.auto()
    NOT_FOUND = enum.auto()
    ALREADY_EXISTS = enum.auto()
    PERMISSION_DENIED = enum.auto()
    UNAUTHENTICATED = enum.auto()
    RESOURCE_EXHAUSTED = enum.auto()
    FAILED_PRECONDITION = enum.auto()
    ABORTED = enum.auto()
    UNAVAILABLE = enum.auto()
    DEADLINE_EXCEEDED = enum.auto()
    INTERNAL = enum.auto()
    CANCELLED = enum.auto()


def _check_reason(reason: str) -> str:
    if reason not in REASONS:
        raise UnregisteredReason(
            f"{reason!r} is not in lomas.common.v1.ErrorReason: declare it there first"
        )
    return reason


class LomasError(Exception):
    """Base of every error the platform reports to a caller.

    A subclass declares its status code and reason in its class line (it keeps its base's code when
    it names none), and an unregistered reason fails at import, not when the error is first raised:

        class NotFound(LomasError, code=Code.NOT_FOUND, reason="NOT_FOUND"): ...
    """

    code: Code = Code.INTERNAL
    reason: str = "INTERNAL"

    def __init_subclass__(
        cls, *, code: Code | None = None, reason: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if reason is not None:
            cls.reason = reason
        _check_reason(cls.reason)

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
            self.reason = _check_reason(reason)
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items()}
        for key in self.metadata:
            if not _METADATA_KEY.match(key):
                raise UnregisteredReason(f"error metadata key {key!r} is not lowerCamel")
        self.retry_after_seconds = retry_after_seconds


# Raise sites usually pass a more precise reason (`InvalidArgument(..., reason="PAGE_TOKEN_INVALID")`).


class InvalidArgument(LomasError, code=Code.INVALID_ARGUMENT, reason="INVALID_ARGUMENT"):
    """A request field is malformed or out of range."""


class InvalidQuery(InvalidArgument, reason="QUERY_INVALID"):
    """A query that does not validate against its dataset's metadata: it costs nothing."""


class InvalidMetadata(InvalidArgument, reason="METADATA_INVALID"):
    """Dataset metadata that Lomas cannot use."""


class NotFound(LomasError, code=Code.NOT_FOUND, reason="NOT_FOUND"):
    """A named resource does not exist (asked only after permission is checked)."""


class AlreadyExists(LomasError, code=Code.ALREADY_EXISTS, reason="ALREADY_EXISTS"):
    """Another resource already holds the name (the same one again is not an error)."""


class PermissionDenied(LomasError, code=Code.PERMISSION_DENIED, reason="PERMISSION_DENIED"):
    """The caller is known but may not do this."""


class DatasetAccessDenied(PermissionDenied, reason="DATASET_ACCESS_DENIED"):
    """No grant on the dataset; the same answer whether or not the dataset exists."""


class AdminRoleRequired(PermissionDenied, reason="ADMIN_ROLE_REQUIRED"):
    """An admin RPC called without the admin role."""


class Unauthenticated(LomasError, code=Code.UNAUTHENTICATED, reason="TOKEN_INVALID"):
    """No token, or one that does not verify."""


class BudgetExhausted(LomasError, code=Code.RESOURCE_EXHAUSTED, reason="PRIVACY_BUDGET_EXHAUSTED"):
    """The ledger cannot cover the query's cost (metadata: requested and remaining)."""


class RateLimited(LomasError, code=Code.RESOURCE_EXHAUSTED, reason="RATE_LIMITED"):
    """The caller sent more calls per second than it may (with retry advice)."""


class TooManyConcurrentQueries(
    LomasError, code=Code.RESOURCE_EXHAUSTED, reason="TOO_MANY_CONCURRENT_QUERIES"
):
    """The caller already has as many queries running as it may."""


class FailedPrecondition(LomasError, code=Code.FAILED_PRECONDITION, reason="FAILED_PRECONDITION"):
    """The system is not in the state the call needs."""


class Conflict(LomasError, code=Code.ABORTED, reason="CONFLICT"):
    """The call clashes with what is already stored under its key (say, a query id reused)."""


class BackendUnavailable(LomasError, code=Code.UNAVAILABLE, reason="BACKEND_UNAVAILABLE"):
    """A dependency is down (with retry advice when known). It always names the dependency
    (`peer` metadata: "admin", "budget", "executor", "redis", "identity-provider", "s3"...), so a
    caller, and the operator reading the caller's report, knows what was unavailable."""

    def __init__(
        self,
        message: str,
        *,
        peer: str,
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(
            message,
            metadata={**(metadata or {}), "peer": peer or "unknown"},
            retry_after_seconds=retry_after_seconds,
        )


class QueryTimeout(LomasError, code=Code.DEADLINE_EXCEEDED, reason="QUERY_TIMEOUT"):
    """A query ran past its time limit."""


class QueryCancelled(LomasError, code=Code.CANCELLED, reason="QUERY_CANCELLED"):
    """The caller cancelled a query before it touched the data: refunded, nothing released."""


class ExecutionFailed(LomasError, code=Code.INTERNAL, reason="QUERY_EXECUTION_FAILED"):
    """A query failed after touching data: the charge is kept, the message carries no data values."""
