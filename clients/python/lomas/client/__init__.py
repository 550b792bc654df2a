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
    QueryCancelled,
    QueryTimeout,
    SourceUnavailable,
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
    "QueryCancelled",
    "QueryJob",
    "QueryStatus",
    "QueryTimeout",
    "SourceUnavailable",
    "Unauthenticated",
]
