"""The Lomas mesh researcher client."""

from lomas.client.client import Client
from lomas.client.errors import (
    AccessDenied,
    AlreadyExists,
    BackendUnavailable,
    BudgetExhausted,
    CostMismatch,
    ExecutionFailed,
    InvalidArgument,
    InvalidQuery,
    LimitExceeded,
    LomasError,
    NotFound,
    QueryTimeout,
    SourceUnavailable,
    Unauthenticated,
)

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "BackendUnavailable",
    "BudgetExhausted",
    "Client",
    "CostMismatch",
    "ExecutionFailed",
    "InvalidArgument",
    "InvalidQuery",
    "LimitExceeded",
    "LomasError",
    "NotFound",
    "QueryTimeout",
    "SourceUnavailable",
    "Unauthenticated",
]
