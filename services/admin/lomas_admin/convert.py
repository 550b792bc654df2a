"""Admin store messages <-> admin store records (the one module that touches both)."""

from __future__ import annotations

import datetime as dt
import json

from google.protobuf import json_format

from lomas.admin.v1 import admin_store_pb2, resources_pb2
from lomas.common.v1 import archive_pb2, dataset_pb2, query_pb2
from lomas_admin.records import ArchiveRecord, AuditRecord, DatasetRecord, GrantRecord, UserRecord
from lomas_admin.schema import AUDIT_AS_IS
from lomas_common.convert import (
    DEFINITION_TO_PROTO,
    metadata_from_json,
    privacy_loss_from_proto,
    privacy_loss_to_proto,
    same_named,
    timestamp_from_datetime,
)
from lomas_common.errors import InvalidArgument

_ROLES = {resources_pb2.ROLE_ADMIN: "admin", resources_pb2.ROLE_RESEARCHER: "researcher"}
_ROLES_BACK = {v: k for k, v in _ROLES.items()}
_FORMATS = {
    dataset_pb2.DATA_FORMAT_CSV: "csv",
    dataset_pb2.DATA_FORMAT_PARQUET: "parquet",
    dataset_pb2.DATA_FORMAT_TABLE: "table",  # a PostgreSQL source
}
_FORMATS_BACK = {v: k for k, v in _FORMATS.items()}


def user_from_proto(user: resources_pb2.User) -> UserRecord:
    return UserRecord(
        name=user.name,
        role=_ROLES.get(user.role, "researcher"),
        may_query=user.may_query,
    )


def user_to_proto(user: UserRecord) -> resources_pb2.User:
    return resources_pb2.User(
        name=user.name,
        role=_ROLES_BACK[user.role],
        may_query=user.may_query,
        create_time=timestamp_from_datetime(user.created_at),
    )


def dataset_from_proto(dataset: resources_pb2.Dataset) -> DatasetRecord:
    if dataset.format not in _FORMATS:
        raise InvalidArgument(
            "dataset format must be CSV, PARQUET or TABLE", reason="DATASET_FORMAT_INVALID"
        )
    if dataset.source.WhichOneof("location") is None:
        raise InvalidArgument("dataset source must be set", reason="DATASET_SOURCE_INVALID")
    return DatasetRecord(
        name=dataset.name,
        source=json_format.MessageToDict(dataset.source, preserving_proto_field_name=True),
        format=_FORMATS[dataset.format],
        metadata=metadata_from_json(dataset.metadata_json),
    )


def dataset_to_proto(dataset: DatasetRecord) -> resources_pb2.Dataset:
    return resources_pb2.Dataset(
        name=dataset.name,
        source=json_format.ParseDict(dict(dataset.source), dataset_pb2.DataSource()),
        format=_FORMATS_BACK[dataset.format],
        metadata_json=json.dumps(dataset.metadata),
        version=dataset.version,
        create_time=timestamp_from_datetime(dataset.created_at),
    )


def descriptor_to_proto(dataset: DatasetRecord) -> dataset_pb2.DatasetDescriptor:
    return dataset_pb2.DatasetDescriptor(
        name=dataset.name,
        version=dataset.version,
        source=json_format.ParseDict(dict(dataset.source), dataset_pb2.DataSource()),
        format=_FORMATS_BACK[dataset.format],
        metadata_json=json.dumps(dataset.metadata),
    )


def grant_from_proto(grant: resources_pb2.Grant) -> GrantRecord:
    return GrantRecord(
        user=grant.user,
        dataset=grant.dataset,
        allocation=privacy_loss_from_proto(grant.allocation, field="grant.allocation"),
    )


def grant_to_proto(grant: GrantRecord) -> resources_pb2.Grant:
    return resources_pb2.Grant(
        user=grant.user,
        dataset=grant.dataset,
        definition=DEFINITION_TO_PROTO[grant.allocation.definition],
        allocation=privacy_loss_to_proto(grant.allocation),
        create_time=timestamp_from_datetime(grant.created_at),
    )


def archive_from_proto(query: archive_pb2.ArchivedQuery) -> ArchiveRecord:
    if not query.query_id or not query.user or not query.dataset:
        raise InvalidArgument(
            "query_id, user and dataset must be set", reason="ARCHIVE_ENTRY_INVALID"
        )
    return ArchiveRecord(
        query_id=query.query_id,
        user=query.user,
        dataset=query.dataset,
        query_json=json_format.MessageToJson(query.query, indent=None),
        cost=privacy_loss_from_proto(query.cost, field="cost"),
        succeeded=query.status == archive_pb2.QUERY_STATUS_SUCCEEDED,
        release=query.release,
        error_reason=query.error_reason,
        error_message=query.error_message,
        submitted_at=query.submit_time.ToDatetime(tzinfo=dt.UTC),
        completed_at=query.complete_time.ToDatetime(tzinfo=dt.UTC),
        fingerprint=query.fingerprint,
    )


def archive_to_proto(record: ArchiveRecord) -> archive_pb2.ArchivedQuery:
    return archive_pb2.ArchivedQuery(
        query_id=record.query_id,
        user=record.user,
        dataset=record.dataset,
        query=json_format.Parse(record.query_json, query_pb2.Query()),
        cost=privacy_loss_to_proto(record.cost),
        status=(
            archive_pb2.QUERY_STATUS_SUCCEEDED
            if record.succeeded
            else archive_pb2.QUERY_STATUS_FAILED
        ),
        release=record.release,
        error_reason=record.error_reason,
        error_message=record.error_message,
        submit_time=timestamp_from_datetime(record.submitted_at),
        complete_time=timestamp_from_datetime(record.completed_at),
        fingerprint=record.fingerprint,
    )


def audit_from_proto(event: admin_store_pb2.AuditEvent) -> AuditRecord:
    return AuditRecord(time=event.time.ToDatetime(tzinfo=dt.UTC), **same_named(event, *AUDIT_AS_IS))


def audit_to_proto(record: AuditRecord) -> admin_store_pb2.AuditEvent:
    return admin_store_pb2.AuditEvent(
        time=timestamp_from_datetime(record.time), **same_named(record, *AUDIT_AS_IS)
    )
