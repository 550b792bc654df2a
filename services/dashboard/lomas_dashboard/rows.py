"""Platform messages as the rows of the pages' tables: plain text, no protobuf in the templates."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import yaml
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor

from lomas.admin.v1 import resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.client.admin_values import source_location
from lomas.client.client import loss_to_dict
from lomas.common.v1 import archive_pb2, dataset_pb2, query_pb2
from lomas_dashboard.budgets import DEFINITIONS, Budget, loss_text

V = TypeVar("V")
V_contra = TypeVar("V_contra", contravariant=True)


class EnumType(Protocol[V_contra]):
    """A generated protobuf enum (its `Name` and descriptor)."""

    DESCRIPTOR: EnumDescriptor

    def Name(self, number: V_contra) -> str: ...


def enum_label(enum: EnumType[V], value: V) -> str:
    """An enum value as lower-case words, without the prefix every value of a Buf-style enum has
    (the enum's name in UPPER_SNAKE_CASE): LEDGER_ENTRY_KIND_IMPORTED_SPEND -> "imported spend"."""
    prefix = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"
    return enum.Name(value).removeprefix(prefix).lower().replace("_", " ")


def when(timestamp: timestamp_pb2.Timestamp) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return ""
    return timestamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def metadata_yaml(metadata_json: str) -> str:
    """A dataset's metadata as the YAML document Lomas administrators write."""
    document: Any = json.loads(metadata_json) if metadata_json else {}
    return str(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))


def source_text(source: dataset_pb2.DataSource) -> str:
    """Where a dataset's data is, with an S3 source's endpoint and credentials name."""
    location = source_location(source)
    if source.WhichOneof("location") != "s3":
        return location or "—"
    s3 = source.s3
    credentials = f"credentials {s3.credentials_name}" if s3.credentials_name else ""
    extra = ", ".join(part for part in (s3.endpoint_url, credentials) if part)
    return location + (f" ({extra})" if extra else "")


def query_text(query: query_pb2.Query) -> str:
    """What a query asked, for the archive: the SQL, or which kind of OpenDP pipeline."""
    kind = query.WhichOneof("kind")
    if kind == "smartnoise_sql":
        return query.smartnoise_sql.sql
    if kind == "opendp":
        pipeline = query.opendp.WhichOneof("pipeline")
        return "OpenDP Polars plan" if pipeline == "polars" else "OpenDP measurement"
    return "—"


QUERY_KINDS = {"smartnoise_sql": "SmartNoise-SQL", "opendp": "OpenDP"}


@dataclass(frozen=True)
class UserRow:
    name: str
    role: str
    may_query: bool
    created: str

    @classmethod
    def of(cls, user: resources_pb2.User) -> UserRow:
        role = "admin" if user.role == resources_pb2.ROLE_ADMIN else "researcher"
        return cls(user.name, role, user.may_query, when(user.create_time))


@dataclass(frozen=True)
class DatasetRow:
    name: str
    data_format: str
    source: str
    version: int
    created: str
    metadata: str

    @classmethod
    def of(cls, dataset: resources_pb2.Dataset) -> DatasetRow:
        return cls(
            dataset.name,
            enum_label(dataset_pb2.DataFormat, dataset.format),
            source_text(dataset.source),
            dataset.version,
            when(dataset.create_time),
            metadata_yaml(dataset.metadata_json),
        )


@dataclass(frozen=True)
class GrantRow:
    user: str
    dataset: str
    definition: str
    budget: Budget | None  # None when the ledger cannot be read
    frozen: bool
    created: str

    @classmethod
    def of(cls, grant: resources_pb2.Grant, ledger: budget_pb2.Ledger | None) -> GrantRow:
        if ledger is None:
            definition = DEFINITIONS.get(grant.definition, "")
            return cls(grant.user, grant.dataset, definition, None, False, when(grant.create_time))
        return cls.of_ledger(ledger)

    @classmethod
    def of_ledger(cls, ledger: budget_pb2.Ledger) -> GrantRow:
        budget = Budget.from_losses(
            ledger.allocation, ledger.spent, ledger.reserved, ledger.remaining
        )
        return cls(
            ledger.user,
            ledger.dataset,
            DEFINITIONS.get(ledger.definition, ""),
            budget,
            ledger.frozen,
            when(ledger.create_time),
        )


@dataclass(frozen=True)
class CapRow:
    dataset: str
    budget: Budget | None  # None when the dataset has no cap
    actor: str
    reason: str
    updated: str

    @classmethod
    def of(cls, dataset: str, cap: budget_pb2.DatasetCap) -> CapRow:
        budget = (
            Budget(loss_to_dict(cap.cap), loss_to_dict(cap.used), {}, loss_to_dict(cap.remaining))
            if cap.HasField("cap")
            else None
        )
        return cls(dataset, budget, cap.actor, cap.reason, when(cap.update_time))


@dataclass(frozen=True)
class EntryRow:
    seq: int
    kind: str
    amount: str
    query_id: str
    actor: str
    reason: str
    created: str
    hash: str

    @classmethod
    def of(cls, entry: budget_pb2.LedgerEntry) -> EntryRow:
        return cls(
            entry.seq,
            enum_label(budget_pb2.LedgerEntryKind, entry.kind),
            loss_text(entry.amount),
            entry.query_id,
            entry.actor,
            entry.reason,
            when(entry.create_time),
            entry.hash,
        )


@dataclass(frozen=True)
class ArchiveRow:
    query_id: str
    user: str
    dataset: str
    kind: str
    query: str
    cost: str
    status: str
    error_reason: str
    submitted: str

    @classmethod
    def of(cls, archived: archive_pb2.ArchivedQuery) -> ArchiveRow:
        return cls(
            archived.query_id,
            archived.user,
            archived.dataset,
            QUERY_KINDS.get(archived.query.WhichOneof("kind") or "", "—"),
            query_text(archived.query),
            loss_text(archived.cost),
            enum_label(archive_pb2.QueryStatus, archived.status),
            archived.error_reason,
            when(archived.submit_time),
        )
