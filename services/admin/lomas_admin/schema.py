"""The admin store's tables, and its rows read back as records."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lomas_admin.records import (
    ArchiveRecord,
    AuditRecord,
    DatasetRecord,
    GrantRecord,
    UserRecord,
    parse_stamp,
)
from lomas_common.db import Database, from_db_decimal, to_db_decimal
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss


def schema(db: Database) -> list[str]:
    """Idempotent DDL (`CREATE ... IF NOT EXISTS`): new tables and indexes are added on start-up;
    existing tables are never altered."""
    dec = db.decimal_type
    blob = "BYTEA" if db.dialect == "postgresql" else "BLOB"
    return [
        """CREATE TABLE IF NOT EXISTS users (
            name TEXT PRIMARY KEY, role TEXT NOT NULL, may_query INTEGER NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS datasets (
            name TEXT PRIMARY KEY, source TEXT NOT NULL, format TEXT NOT NULL, metadata TEXT NOT NULL,
            version INTEGER NOT NULL, created_at TEXT NOT NULL)""",
        # The last version each dataset name had, kept when the dataset is deleted (store.py).
        """CREATE TABLE IF NOT EXISTS dataset_versions (
            name TEXT PRIMARY KEY, last_version INTEGER NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS grants (
            user_name TEXT NOT NULL, dataset TEXT NOT NULL, definition TEXT NOT NULL,
            epsilon {dec} NOT NULL, delta {dec} NOT NULL, rho {dec} NOT NULL, created_at TEXT NOT NULL,
            PRIMARY KEY (user_name, dataset))""",
        f"""CREATE TABLE IF NOT EXISTS archive (
            query_id TEXT PRIMARY KEY, user_name TEXT NOT NULL, dataset TEXT NOT NULL,
            query_json TEXT NOT NULL, definition TEXT NOT NULL,
            epsilon {dec} NOT NULL, delta {dec} NOT NULL, rho {dec} NOT NULL,
            succeeded INTEGER NOT NULL, release {blob} NOT NULL, error_reason TEXT NOT NULL,
            error_message TEXT NOT NULL, submitted_at TEXT NOT NULL, completed_at TEXT NOT NULL,
            fingerprint TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX IF NOT EXISTS archive_by_user ON archive (user_name, dataset, submitted_at)",
        "CREATE INDEX IF NOT EXISTS archive_by_fingerprint ON archive (user_name, fingerprint)",
        # The keyset order of ListArchivedQueries without filters.
        "CREATE INDEX IF NOT EXISTS archive_by_time ON archive (submitted_at, query_id)",
        f"""CREATE TABLE IF NOT EXISTS audit_log (
            id {"BIGSERIAL" if db.dialect == "postgresql" else "INTEGER"} PRIMARY KEY,
            time TEXT NOT NULL, actor TEXT NOT NULL, method TEXT NOT NULL,
            request_json TEXT NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS audit_by_actor ON audit_log (actor, id)",
        # First answers of mutating calls that carried a request id (AIP-155), kept for replays.
        """CREATE TABLE IF NOT EXISTS admin_requests (
            method TEXT NOT NULL, request_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
            response TEXT NOT NULL, created_at TEXT NOT NULL,
            PRIMARY KEY (method, request_id))""",
        "CREATE INDEX IF NOT EXISTS admin_requests_by_age ON admin_requests (created_at)",
    ]


def user_from_row(row: Mapping[str, Any]) -> UserRecord:
    return UserRecord(
        name=row["name"],
        role=row["role"],
        may_query=bool(row["may_query"]),
        created_at=parse_stamp(row["created_at"]),
    )


def dataset_from_row(row: Mapping[str, Any], prefix: str = "") -> DatasetRecord:
    return DatasetRecord(
        name=row[f"{prefix}name"],
        source=json.loads(row[f"{prefix}source"]),
        format=row[f"{prefix}format"],
        metadata=json.loads(row[f"{prefix}metadata"]),
        version=int(row[f"{prefix}version"]),
        created_at=parse_stamp(row[f"{prefix}created_at"]),
    )


def loss_from_row(row: Mapping[str, Any]) -> PrivacyLoss:
    return PrivacyLoss(
        PrivacyDefinition(row["definition"]),
        epsilon=from_db_decimal(row["epsilon"]),
        delta=from_db_decimal(row["delta"]),
        rho=from_db_decimal(row["rho"]),
    )


def loss_params(loss: PrivacyLoss) -> tuple[str, str, str, str]:
    """The (definition, epsilon, delta, rho) columns of a privacy loss."""
    return (
        loss.definition.value,
        to_db_decimal(loss.epsilon),
        to_db_decimal(loss.delta),
        to_db_decimal(loss.rho),
    )


def grant_from_row(row: Mapping[str, Any]) -> GrantRecord:
    return GrantRecord(
        user=row["user_name"],
        dataset=row["dataset"],
        allocation=loss_from_row(row),
        created_at=parse_stamp(row["created_at"]),
    )


def archive_from_row(row: Mapping[str, Any]) -> ArchiveRecord:
    return ArchiveRecord(
        query_id=row["query_id"],
        user=row["user_name"],
        dataset=row["dataset"],
        query_json=row["query_json"],
        cost=loss_from_row(row),
        succeeded=bool(row["succeeded"]),
        release=bytes(row["release"]),
        error_reason=row["error_reason"],
        error_message=row["error_message"],
        submitted_at=parse_stamp(row["submitted_at"]),
        completed_at=parse_stamp(row["completed_at"]),
        fingerprint=row["fingerprint"],
    )


# The fields of an audit event that its record, its row and its message hold alike, under the same
# names: all but its time (a datetime, text in the table, a Timestamp in the message).
AUDIT_AS_IS = ("actor", "method", "request_json", "code", "reason")


def audit_from_row(row: Mapping[str, Any]) -> AuditRecord:
    return AuditRecord(time=parse_stamp(row["time"]), **{name: row[name] for name in AUDIT_AS_IS})
