"""The Lomas mesh researcher client."""

from lomas.client.client import Client
from lomas.client.errors import (
    AccessDenied,
    AlreadyExists,
    BackendUnavailable,
    BudgetExhausted,
    CostMismatch,
    DataAccessed,
    ExecutionFailed,
    InvalidArgument,
    InvalidQuery,
    LimitExceeded,
    LomasError,
    NotFound,
    PoolUnavailable,
    QueryCancelled,
    QueryTimeout,
    SourceUnavailable,
    TimeLimitExceeded,
    Unauthenticated,
)
from lomas.client.jobs import QueryJob, QueryStatus

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "BackendUnavailable",
    "BudgetExhausted",
    "Client",
    "CostMismatch",
    "DataAccessed",
    "ExecutionFailed",
    "InvalidArgument",
    "InvalidQuery",
    "LimitExceeded",
    "LomasError",
    "NotFound",
    "PoolUnavailable",
    "QueryCancelled",
    "QueryJob",
    "QueryStatus",
    "QueryTimeout",
    "SourceUnavailable",
    "TimeLimitExceeded",
    "Unauthenticated",
]
