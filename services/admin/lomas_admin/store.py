"""The admin store: users, datasets, grants and the query archive, on SQLite or PostgreSQL.

Domain code: plain records in, plain records out; no gRPC, no generated messages.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lomas_common.db import Database, Transaction, UniqueViolation, from_db_decimal, to_db_decimal
from lomas_common.errors import AlreadyExists, DatasetAccessDenied, InvalidArgument, NotFound
from lomas_common.privacy import PrivacyDefinition, PrivacyLoss

ROLES = ("researcher", "admin")
MAX_NAME_CHARS = 256


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def _parse_stamp(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value))


def check_name(value: str, what: str) -> str:
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise InvalidArgument(
            f"{what} must be 1 to {MAX_NAME_CHARS} printable characters",
            reason=f"{what.upper()}_INVALID",
        )
    return value


@dataclass(frozen=True)
class UserRecord:
    name: str
    role: str = "researcher"
    may_query: bool = True
    created_at: dt.datetime = field(default_factory=_now, compare=False)


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    source: Mapping[str, Any]  # {"local": {"path": ...}} | {"s3": {...}} | {"url": {"url": ...}}
    format: str  # "csv" | "parquet"
    metadata: Mapping[str, Any]  # Lomas metadata (validated by an executor before it gets here)
    version: int = 1
    created_at: dt.datetime = field(default_factory=_now, compare=False)


@dataclass(frozen=True)
class GrantRecord:
    user: str
    dataset: str
    allocation: PrivacyLoss
    created_at: dt.datetime = field(default_factory=_now, compare=False)


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


def schema(db: Database) -> list[str]:
    dec = db.decimal_type
    blob = "BYTEA" if db.dialect == "postgresql" else "BLOB"
    return [
        """CREATE TABLE IF NOT EXISTS users (
            name TEXT PRIMARY KEY, role TEXT NOT NULL, may_query INTEGER NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS datasets (
            name TEXT PRIMARY KEY, source TEXT NOT NULL, format TEXT NOT NULL, metadata TEXT NOT NULL,
            version INTEGER NOT NULL, created_at TEXT NOT NULL)""",
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
        f"""CREATE TABLE IF NOT EXISTS audit_log (
            id {"BIGSERIAL" if db.dialect == "postgresql" else "INTEGER"} PRIMARY KEY,
            time TEXT NOT NULL, actor TEXT NOT NULL, method TEXT NOT NULL,
            request_json TEXT NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS audit_by_actor ON audit_log (actor, id)",
    ]


def _user(row: Mapping[str, Any]) -> UserRecord:
    return UserRecord(
        name=row["name"],
        role=row["role"],
        may_query=bool(row["may_query"]),
        created_at=_parse_stamp(row["created_at"]),
    )


def _dataset(row: Mapping[str, Any], prefix: str = "") -> DatasetRecord:
    return DatasetRecord(
        name=row[f"{prefix}name"],
        source=json.loads(row[f"{prefix}source"]),
        format=row[f"{prefix}format"],
        metadata=json.loads(row[f"{prefix}metadata"]),
        version=int(row[f"{prefix}version"]),
        created_at=_parse_stamp(row[f"{prefix}created_at"]),
    )


def _loss(row: Mapping[str, Any]) -> PrivacyLoss:
    return PrivacyLoss(
        PrivacyDefinition(row["definition"]),
        epsilon=from_db_decimal(row["epsilon"]),
        delta=from_db_decimal(row["delta"]),
        rho=from_db_decimal(row["rho"]),
    )


def _loss_params(loss: PrivacyLoss) -> tuple[str, str, str, str]:
    return (
        loss.definition.value,
        to_db_decimal(loss.epsilon),
        to_db_decimal(loss.delta),
        to_db_decimal(loss.rho),
    )


def _grant(row: Mapping[str, Any]) -> GrantRecord:
    return GrantRecord(
        user=row["user_name"],
        dataset=row["dataset"],
        allocation=_loss(row),
        created_at=_parse_stamp(row["created_at"]),
    )


def _archive(row: Mapping[str, Any]) -> ArchiveRecord:
    return ArchiveRecord(
        query_id=row["query_id"],
        user=row["user_name"],
        dataset=row["dataset"],
        query_json=row["query_json"],
        cost=_loss(row),
        succeeded=bool(row["succeeded"]),
        release=bytes(row["release"]),
        error_reason=row["error_reason"],
        error_message=row["error_message"],
        submitted_at=_parse_stamp(row["submitted_at"]),
        completed_at=_parse_stamp(row["completed_at"]),
        fingerprint=row["fingerprint"],
    )


class AdminStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        db.apply_schema(schema(db))

    # Users -------------------------------------------------------------------------------------

    def create_user(self, user: UserRecord) -> UserRecord:
        """Idempotent: the same user again returns the stored one; a different one is ALREADY_EXISTS."""
        check_name(user.name, "user")
        if user.role not in ROLES:
            raise InvalidArgument("role must be researcher or admin", reason="ROLE_INVALID")

        def work(tx: Transaction) -> UserRecord:
            row = tx.fetchone("SELECT * FROM users WHERE name = ?", (user.name,))
            if row is not None:
                existing = _user(row)
                if existing != user:
                    raise AlreadyExists(f"user {user.name!r} already exists", reason="USER_EXISTS")
                return existing
            tx.execute(
                "INSERT INTO users (name, role, may_query, created_at) VALUES (?, ?, ?, ?)",
                (user.name, user.role, int(user.may_query), _stamp(user.created_at)),
            )
            return user

        return self._db.run(work)

    def get_user(self, name: str) -> UserRecord:
        with self._db.transaction(readonly=True) as tx:
            row = tx.fetchone("SELECT * FROM users WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"user {name!r} not found", reason="USER_NOT_FOUND")
        return _user(row)

    def set_may_query(self, name: str, may_query: bool) -> UserRecord:
        """Whether `name` may start queries (the same value again changes nothing)."""

        def work(tx: Transaction) -> UserRecord:
            update = "UPDATE users SET may_query = ? WHERE name = ?"
            if tx.execute(update, (int(may_query), name)).rowcount == 0:
                raise NotFound(f"user {name!r} not found", reason="USER_NOT_FOUND")
            row = tx.fetchone("SELECT * FROM users WHERE name = ?", (name,))
            assert row is not None
            return _user(row)

        return self._db.run(work)

    def delete_user(self, name: str) -> None:
        with self._db.transaction() as tx:
            if tx.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"user {name!r} not found", reason="USER_NOT_FOUND")
            tx.execute("DELETE FROM grants WHERE user_name = ?", (name,))

    def list_users(self, offset: int, limit: int) -> tuple[list[UserRecord], bool]:
        with self._db.transaction(readonly=True) as tx:
            rows = tx.fetchall(
                "SELECT * FROM users ORDER BY name LIMIT ? OFFSET ?", (limit + 1, offset)
            )
        return [_user(r) for r in rows[:limit]], len(rows) > limit

    def ensure_admin(self, name: str) -> UserRecord:
        """Bootstrap: make sure `name` exists with the admin role (used at start-up)."""
        check_name(name, "user")
        with self._db.transaction() as tx:
            row = tx.fetchone("SELECT * FROM users WHERE name = ?" + tx.lock_suffix, (name,))
            if row is None:
                user = UserRecord(name=name, role="admin", may_query=True)
                tx.execute(
                    "INSERT INTO users (name, role, may_query, created_at) VALUES (?, ?, ?, ?)",
                    (user.name, user.role, 1, _stamp(user.created_at)),
                )
                return user
            tx.execute("UPDATE users SET role = 'admin' WHERE name = ?", (name,))
        return self.get_user(name)

    # Datasets ----------------------------------------------------------------------------------

    def create_dataset(self, dataset: DatasetRecord) -> DatasetRecord:
        check_name(dataset.name, "dataset")
        source_json = json.dumps(dataset.source)
        metadata_json = json.dumps(dataset.metadata)  # key order kept: it is the column order

        def work(tx: Transaction) -> DatasetRecord:
            row = tx.fetchone("SELECT * FROM datasets WHERE name = ?", (dataset.name,))
            if row is not None:
                existing = _dataset(row)
                same = (
                    existing.source == dataset.source
                    and existing.metadata == dataset.metadata
                    and existing.format == dataset.format
                )
                if not same:
                    raise AlreadyExists(
                        f"dataset {dataset.name!r} already exists", reason="DATASET_EXISTS"
                    )
                return existing
            tx.execute(
                "INSERT INTO datasets (name, source, format, metadata, version, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    dataset.name,
                    source_json,
                    dataset.format,
                    metadata_json,
                    1,
                    _stamp(dataset.created_at),
                ),
            )
            return DatasetRecord(
                dataset.name,
                dataset.source,
                dataset.format,
                dataset.metadata,
                1,
                dataset.created_at,
            )

        return self._db.run(work)

    def update_dataset(self, dataset: DatasetRecord) -> DatasetRecord:
        """Replace source, format and metadata; the version goes up by one, so every cache keyed on
        (name, version) and every free replay of the old version stop applying."""

        def work(tx: Transaction) -> DatasetRecord:
            row = tx.fetchone(
                "SELECT * FROM datasets WHERE name = ?" + tx.lock_suffix, (dataset.name,)
            )
            if row is None:
                raise NotFound(f"dataset {dataset.name!r} not found", reason="DATASET_NOT_FOUND")
            existing = _dataset(row)
            version = existing.version + 1
            tx.execute(
                "UPDATE datasets SET source = ?, format = ?, metadata = ?, version = ?"
                " WHERE name = ?",
                (
                    json.dumps(dataset.source),
                    dataset.format,
                    json.dumps(dataset.metadata),
                    version,
                    dataset.name,
                ),
            )
            return DatasetRecord(
                dataset.name,
                dataset.source,
                dataset.format,
                dataset.metadata,
                version,
                existing.created_at,
            )

        return self._db.run(work)

    def get_dataset(self, name: str) -> DatasetRecord:
        with self._db.transaction(readonly=True) as tx:
            row = tx.fetchone("SELECT * FROM datasets WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"dataset {name!r} not found", reason="DATASET_NOT_FOUND")
        return _dataset(row)

    def delete_dataset(self, name: str) -> None:
        with self._db.transaction() as tx:
            if tx.execute("DELETE FROM datasets WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"dataset {name!r} not found", reason="DATASET_NOT_FOUND")
            tx.execute("DELETE FROM grants WHERE dataset = ?", (name,))

    def list_datasets(self, offset: int, limit: int) -> tuple[list[DatasetRecord], bool]:
        with self._db.transaction(readonly=True) as tx:
            rows = tx.fetchall(
                "SELECT * FROM datasets ORDER BY name LIMIT ? OFFSET ?", (limit + 1, offset)
            )
        return [_dataset(r) for r in rows[:limit]], len(rows) > limit

    # Grants ------------------------------------------------------------------------------------

    def create_grant(self, grant: GrantRecord) -> GrantRecord:
        def work(tx: Transaction) -> GrantRecord:
            if tx.fetchone("SELECT name FROM users WHERE name = ?", (grant.user,)) is None:
                raise NotFound(f"user {grant.user!r} not found", reason="USER_NOT_FOUND")
            if tx.fetchone("SELECT name FROM datasets WHERE name = ?", (grant.dataset,)) is None:
                raise NotFound(f"dataset {grant.dataset!r} not found", reason="DATASET_NOT_FOUND")
            row = tx.fetchone(
                "SELECT * FROM grants WHERE user_name = ? AND dataset = ?",
                (grant.user, grant.dataset),
            )
            if row is not None:
                existing = _grant(row)
                if existing.allocation != grant.allocation:
                    raise AlreadyExists(
                        f"user {grant.user!r} already holds a grant on {grant.dataset!r}",
                        reason="GRANT_EXISTS",
                    )
                return existing
            tx.execute(
                "INSERT INTO grants (user_name, dataset, definition, epsilon, delta, rho, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    grant.user,
                    grant.dataset,
                    *_loss_params(grant.allocation),
                    _stamp(grant.created_at),
                ),
            )
            return grant

        return self._db.run(work)

    def delete_grant(self, user: str, dataset: str) -> None:
        with self._db.transaction() as tx:
            deleted = tx.execute(
                "DELETE FROM grants WHERE user_name = ? AND dataset = ?", (user, dataset)
            ).rowcount
        if deleted == 0:
            raise NotFound("no such grant", reason="GRANT_NOT_FOUND")

    def list_grants(self, user: str, offset: int, limit: int) -> tuple[list[GrantRecord], bool]:
        where, params = ("WHERE user_name = ?", (user,)) if user else ("", ())
        with self._db.transaction(readonly=True) as tx:
            rows = tx.fetchall(
                f"SELECT * FROM grants {where} ORDER BY user_name, dataset LIMIT ? OFFSET ?",
                (*params, limit + 1, offset),
            )
        return [_grant(r) for r in rows[:limit]], len(rows) > limit

    def authorize(self, user: str, dataset: str) -> Access:
        """The user's grant on the dataset. Without a grant the answer is the same whether or not the
        dataset exists, so names never leak (permission before existence)."""
        with self._db.transaction(readonly=True) as tx:
            row = tx.fetchone(
                "SELECT g.*, d.name AS d_name, d.source AS d_source, d.format AS d_format,"
                " d.metadata AS d_metadata, d.version AS d_version, d.created_at AS d_created_at,"
                " u.role AS u_role, u.may_query AS u_may_query, u.created_at AS u_created_at"
                " FROM grants g JOIN datasets d ON d.name = g.dataset"
                " JOIN users u ON u.name = g.user_name"
                " WHERE g.user_name = ? AND g.dataset = ?",
                (user, dataset),
            )
        if row is None:
            raise DatasetAccessDenied(f"no access to dataset {dataset!r}")
        return Access(
            user=UserRecord(
                name=user,
                role=row["u_role"],
                may_query=bool(row["u_may_query"]),
                created_at=_parse_stamp(row["u_created_at"]),
            ),
            grant=_grant(row),
            dataset=_dataset(row, prefix="d_"),
        )

    # Archive -----------------------------------------------------------------------------------

    def record_query_result(self, record: ArchiveRecord) -> ArchiveRecord:
        """Store a query's outcome under its id. The first record wins: later ones get it back."""

        def work(tx: Transaction) -> ArchiveRecord:
            row = tx.fetchone("SELECT * FROM archive WHERE query_id = ?", (record.query_id,))
            if row is not None:
                return _archive(row)
            tx.execute(
                "INSERT INTO archive (query_id, user_name, dataset, query_json, definition, epsilon,"
                " delta, rho, succeeded, release, error_reason, error_message, submitted_at,"
                " completed_at, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.query_id,
                    record.user,
                    record.dataset,
                    record.query_json,
                    *_loss_params(record.cost),
                    int(record.succeeded),
                    record.release,
                    record.error_reason,
                    record.error_message,
                    _stamp(record.submitted_at),
                    _stamp(record.completed_at),
                    record.fingerprint,
                ),
            )
            return record

        try:
            return self._db.run(work)
        except UniqueViolation:  # lost every retry to a concurrent writer: theirs is the record
            return self.get_archived_query(record.query_id)

    def get_archived_query(self, query_id: str) -> ArchiveRecord:
        with self._db.transaction(readonly=True) as tx:
            row = tx.fetchone("SELECT * FROM archive WHERE query_id = ?", (query_id,))
        if row is None:
            raise NotFound("no such archived query", reason="QUERY_NOT_FOUND")
        return _archive(row)

    def find_released_query(self, user: str, fingerprint: str) -> ArchiveRecord | None:
        """The user's latest successful release of the query with this fingerprint, if any."""
        if not fingerprint:
            return None
        with self._db.transaction(readonly=True) as tx:
            row = tx.fetchone(
                "SELECT * FROM archive WHERE user_name = ? AND fingerprint = ? AND succeeded = 1"
                " ORDER BY completed_at DESC LIMIT 1",
                (user, fingerprint),
            )
        return None if row is None else _archive(row)

    def list_archived_queries(
        self, user: str, dataset: str, offset: int, limit: int
    ) -> tuple[list[ArchiveRecord], bool]:
        clauses, params = [], []
        if user:
            clauses.append("user_name = ?")
            params.append(user)
        if dataset:
            clauses.append("dataset = ?")
            params.append(dataset)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._db.transaction(readonly=True) as tx:
            rows = tx.fetchall(
                f"SELECT * FROM archive {where} ORDER BY submitted_at DESC, query_id"
                " LIMIT ? OFFSET ?",
                (*params, limit + 1, offset),
            )
        return [_archive(r) for r in rows[:limit]], len(rows) > limit

    # Audit trail --------------------------------------------------------------------------------

    def record_audit_event(self, event: AuditRecord) -> None:
        """Append one event; the trail is append-only (no update or delete path exists)."""
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO audit_log (time, actor, method, request_json, code, reason)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    _stamp(event.time),
                    event.actor,
                    event.method,
                    event.request_json,
                    event.code,
                    event.reason,
                ),
            )

    def list_audit_events(
        self, actor: str, offset: int, limit: int
    ) -> tuple[list[AuditRecord], bool]:
        where, params = ("WHERE actor = ?", (actor,)) if actor else ("", ())
        with self._db.transaction(readonly=True) as tx:
            rows = tx.fetchall(
                f"SELECT * FROM audit_log {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*params, limit + 1, offset),
            )
        events = [
            AuditRecord(
                time=_parse_stamp(r["time"]),
                actor=r["actor"],
                method=r["method"],
                request_json=r["request_json"],
                code=r["code"],
                reason=r["reason"],
            )
            for r in rows[:limit]
        ]
        return events, len(rows) > limit
