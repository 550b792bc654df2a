"""The admin store's domain values: plain records in, plain records out (no gRPC, no messages)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lomas_common.errors import InvalidArgument
from lomas_common.privacy import PrivacyLoss

ROLES = ("researcher", "admin")
MAX_NAME_CHARS = 256  # names, query ids and request ids; also what a page token's key part may hold

T = TypeVar("T")
# A row's position in a list: its ORDER BY columns, unique together (what a keyset page token holds).
SortKey = tuple[str | int, ...]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def stamp(value: dt.datetime) -> str:
    """A time as stored (ISO 8601 text in UTC, which sorts as it reads)."""
    return value.astimezone(dt.UTC).isoformat()


def parse_stamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value))


def check_name(value: str, what: str, reason: str) -> str:
    """`value` if it is 1 to MAX_NAME_CHARS printable characters, else INVALID_ARGUMENT `reason`."""
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise InvalidArgument(
            f"{what} must be 1 to {MAX_NAME_CHARS} printable characters",
            reason=reason,
            metadata={"field": what},
        )
    return value


@dataclass(frozen=True)
class CatalogueEntry:
    """A user, dataset or grant: stamped when first stored. The time is left out of comparisons, so a
    repeated create finds the stored entry equal to the one it asks for."""

    created_at: dt.datetime = field(default_factory=now, compare=False, kw_only=True)


@dataclass(frozen=True)
class UserRecord(CatalogueEntry):
    name: str
    role: str = "researcher"
    may_query: bool = True


@dataclass(frozen=True)
class DatasetRecord(CatalogueEntry):
    name: str
    source: Mapping[str, Any]  # {"local": {"path": ...}} | {"s3": {...}} | {"url": {"url": ...}}
    format: str  # "csv" | "parquet" | "table"
    metadata: Mapping[str, Any]  # Lomas metadata (validated by an executor before it gets here)
    version: int = 1


@dataclass(frozen=True)
class GrantRecord(CatalogueEntry):
    user: str
    dataset: str
    allocation: PrivacyLoss


@dataclass(frozen=True)
class ArchiveRecord:
    """The outcome of one real query. `query_json` and `cost` are opaque to the store."""

    query_id: str
    user: str
    dataset: str
    query_json: str
    cost: PrivacyLoss
    succeeded: bool
    release: bytes
    error_reason: str
    error_message: str
    submitted_at: dt.datetime
    completed_at: dt.datetime
    fingerprint: str = ""  # key of free replays; "" for queries that may not be replayed


@dataclass(frozen=True)
class AuditRecord:
    """One call to the public API: who, what, and how it ended."""

    time: dt.datetime
    actor: str
    method: str
    request_json: str
    code: str
    reason: str


@dataclass(frozen=True)
class Access:
    user: UserRecord
    grant: GrantRecord
    dataset: DatasetRecord


@dataclass(frozen=True)
class Listing(Generic[T]):
    """One page of a list: its rows, and the sort key of the last one when more rows follow."""

    items: list[T]
    next_after: SortKey | None
