"""The admin store's catalogue: users, datasets and grants, on SQLite or PostgreSQL.

Domain code: plain records in, plain records out; no gRPC, no generated messages. Every mutation
takes an optional request id and is then answered once (`idempotency`); every list pages by keyset
(`keyset`). The query archive and the audit trail live in `archive`.
"""

from __future__ import annotations

import dataclasses
import json

from lomas_admin import idempotency
from lomas_admin.idempotency import RequestLog, record_fields
from lomas_admin.keyset import Keyset
from lomas_admin.records import (
    ROLES,
    Access,
    DatasetRecord,
    GrantRecord,
    Listing,
    SortKey,
    UserRecord,
    check_name,
    parse_stamp,
    stamp,
)
from lomas_admin.schema import (
    dataset_from_row,
    grant_from_row,
    loss_params,
    schema,
    user_from_row,
)
from lomas_common.db import Database, Transaction
from lomas_common.errors import AlreadyExists, DatasetAccessDenied, InvalidArgument, NotFound

USERS = Keyset("users", ("name",), (str,))
DATASETS = Keyset("datasets", ("name",), (str,))
GRANTS = Keyset("grants", ("user_name", "dataset"), (str, str))


def _user_not_found(name: str) -> NotFound:
    return NotFound(f"user {name!r} not found", reason="USER_NOT_FOUND")


def _dataset_not_found(name: str) -> NotFound:
    return NotFound(f"dataset {name!r} not found", reason="DATASET_NOT_FOUND")


class AdminStore:
    def __init__(self, db: Database, requests: RequestLog | None = None) -> None:
        self._db = db
        self._requests = requests or RequestLog(db)
        db.apply_schema(schema(db))

    # Users -------------------------------------------------------------------------------------

    def create_user(self, user: UserRecord, request_id: str = "") -> UserRecord:
        """Idempotent: the same user again returns the stored one; a different one is ALREADY_EXISTS."""
        check_name(user.name, "user", "USER_INVALID")
        if user.role not in ROLES:
            raise InvalidArgument("role must be researcher or admin", reason="ROLE_INVALID")

        def work(tx: Transaction) -> UserRecord:
            row = tx.fetchone("SELECT * FROM users WHERE name = ?", (user.name,))
            if row is not None:
                existing = user_from_row(row)
                if existing != user:
                    raise AlreadyExists(f"user {user.name!r} already exists", reason="USER_EXISTS")
                return existing
            tx.execute(
                "INSERT INTO users (name, role, may_query, created_at) VALUES (?, ?, ?, ?)",
                (user.name, user.role, int(user.may_query), stamp(user.created_at)),
            )
            return user

        params = record_fields(user, leave_out=("created_at",))
        return self._requests.run("CreateUser", request_id, params, work, idempotency.USER)

    def get_user(self, name: str) -> UserRecord:
        with self._db.transaction(readonly=True) as tx:
            row = tx.fetchone("SELECT * FROM users WHERE name = ?", (name,))
        if row is None:
            raise _user_not_found(name)
        return user_from_row(row)

    def set_may_query(self, name: str, may_query: bool, request_id: str = "") -> UserRecord:
        """Whether `name` may start queries (the same value again changes nothing)."""

        def work(tx: Transaction) -> UserRecord:
            update = "UPDATE users SET may_query = ? WHERE name = ?"
            if tx.execute(update, (int(may_query), name)).rowcount == 0:
                raise _user_not_found(name)
            row = tx.fetchone("SELECT * FROM users WHERE name = ?", (name,))
            if row is None:  # deleted in between: impossible while the update holds its lock
                raise _user_not_found(name)
            return user_from_row(row)

        params = {"name": name, "may_query": may_query}
        return self._requests.run("SetUserMayQuery", request_id, params, work, idempotency.USER)

    def delete_user(self, name: str, request_id: str = "") -> None:
        """Delete a user and the user's grants."""

        def work(tx: Transaction) -> None:
            if tx.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise _user_not_found(name)
            tx.execute("DELETE FROM grants WHERE user_name = ?", (name,))

        self._requests.run("DeleteUser", request_id, {"name": name}, work, idempotency.NOTHING)

    def list_users(self, after: SortKey | None, limit: int) -> Listing[UserRecord]:
        """Users by name, after the user named `after` (a key from a previous page)."""
        with self._db.transaction(readonly=True) as tx:
            rows, next_after = USERS.fetch(tx, {}, after, limit)
        return Listing([user_from_row(r) for r in rows], next_after)

    def ensure_admin(self, name: str) -> UserRecord:
        """Bootstrap: make sure `name` exists with the admin role (used at start-up)."""
        check_name(name, "user", "USER_INVALID")
        with self._db.transaction() as tx:
            row = tx.fetchone("SELECT * FROM users WHERE name = ?" + tx.lock_suffix, (name,))
            if row is None:
                user = UserRecord(name=name, role="admin", may_query=True)
                tx.execute(
                    "INSERT INTO users (name, role, may_query, created_at) VALUES (?, ?, ?, ?)",
                    (user.name, user.role, 1, stamp(user.created_at)),
                )
                return user
            tx.execute("UPDATE users SET role = 'admin' WHERE name = ?", (name,))
        return self.get_user(name)

    # Datasets ----------------------------------------------------------------------------------

    def create_dataset(self, dataset: DatasetRecord, request_id: str = "") -> DatasetRecord:
        """Idempotent: the same dataset again returns the stored one; another is ALREADY_EXISTS."""
        check_name(dataset.name, "dataset", "DATASET_INVALID")
        source_json = json.dumps(dataset.source)
        metadata_json = json.dumps(dataset.metadata)  # key order kept: it is the column order

        def work(tx: Transaction) -> DatasetRecord:
            row = tx.fetchone("SELECT * FROM datasets WHERE name = ?", (dataset.name,))
            if row is not None:
                existing = dataset_from_row(row)
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
            version = _next_version(tx, dataset.name, 0)
            tx.execute(
                "INSERT INTO datasets (name, source, format, metadata, version, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    dataset.name,
                    source_json,
                    dataset.format,
                    metadata_json,
                    version,
                    stamp(dataset.created_at),
                ),
            )
            return dataclasses.replace(dataset, version=version)

        return self._requests.run(
            "CreateDataset", request_id, _dataset_params(dataset), work, idempotency.DATASET
        )

    def update_dataset(self, dataset: DatasetRecord, request_id: str = "") -> DatasetRecord:
        """Replace source, format and metadata; the version goes up by one, so every cache keyed on
        (name, version) and every free replay of the old version stop applying."""

        def work(tx: Transaction) -> DatasetRecord:
            row = tx.fetchone(
                "SELECT * FROM datasets WHERE name = ?" + tx.lock_suffix, (dataset.name,)
            )
            if row is None:
                raise _dataset_not_found(dataset.name)
            existing = dataset_from_row(row)
            version = _next_version(tx, dataset.name, existing.version)
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
            return dataclasses.replace(dataset, version=version, created_at=existing.created_at)

        return self._requests.run(
            "UpdateDataset", request_id, _dataset_params(dataset), work, idempotency.DATASET
        )

    def get_dataset(self, name: str) -> DatasetRecord:
        with self._db.transaction(readonly=True) as tx:
            row = tx.fetchone("SELECT * FROM datasets WHERE name = ?", (name,))
        if row is None:
            raise _dataset_not_found(name)
        return dataset_from_row(row)

    def delete_dataset(self, name: str, request_id: str = "") -> None:
        """Delete a dataset and the grants on it."""

        def work(tx: Transaction) -> None:
            row = tx.fetchone(
                "SELECT version FROM datasets WHERE name = ?" + tx.lock_suffix, (name,)
            )
            if row is None:
                raise _dataset_not_found(name)
            _remember_version(tx, name, int(row["version"]))
            tx.execute("DELETE FROM datasets WHERE name = ?", (name,))
            tx.execute("DELETE FROM grants WHERE dataset = ?", (name,))

        self._requests.run("DeleteDataset", request_id, {"name": name}, work, idempotency.NOTHING)

    def list_datasets(self, after: SortKey | None, limit: int) -> Listing[DatasetRecord]:
        """Datasets by name, after the dataset named `after` (a key from a previous page)."""
        with self._db.transaction(readonly=True) as tx:
            rows, next_after = DATASETS.fetch(tx, {}, after, limit)
        return Listing([dataset_from_row(r) for r in rows], next_after)

    # Grants ------------------------------------------------------------------------------------

    def create_grant(self, grant: GrantRecord, request_id: str = "") -> GrantRecord:
        """Idempotent: the same grant again returns the stored one; another is ALREADY_EXISTS."""

        def work(tx: Transaction) -> GrantRecord:
            if tx.fetchone("SELECT name FROM users WHERE name = ?", (grant.user,)) is None:
                raise _user_not_found(grant.user)
            if tx.fetchone("SELECT name FROM datasets WHERE name = ?", (grant.dataset,)) is None:
                raise _dataset_not_found(grant.dataset)
            row = tx.fetchone(
                "SELECT * FROM grants WHERE user_name = ? AND dataset = ?",
                (grant.user, grant.dataset),
            )
            if row is not None:
                existing = grant_from_row(row)
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
                    *loss_params(grant.allocation),
                    stamp(grant.created_at),
                ),
            )
            return grant

        params = record_fields(grant, leave_out=("created_at",))
        return self._requests.run("CreateGrant", request_id, params, work, idempotency.GRANT)

    def delete_grant(self, user: str, dataset: str, request_id: str = "") -> None:
        """Remove a grant (the budget ledger keeps its history)."""

        def work(tx: Transaction) -> None:
            deleted = tx.execute(
                "DELETE FROM grants WHERE user_name = ? AND dataset = ?", (user, dataset)
            ).rowcount
            if deleted == 0:
                raise NotFound("no such grant", reason="GRANT_NOT_FOUND")

        params = {"user": user, "dataset": dataset}
        self._requests.run("DeleteGrant", request_id, params, work, idempotency.NOTHING)

    def list_grants(self, user: str, after: SortKey | None, limit: int) -> Listing[GrantRecord]:
        """Grants by (user, dataset), only `user`'s when set, after the key `after`."""
        with self._db.transaction(readonly=True) as tx:
            rows, next_after = GRANTS.fetch(tx, {"user_name": user}, after, limit)
        return Listing([grant_from_row(r) for r in rows], next_after)

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
                created_at=parse_stamp(row["u_created_at"]),
            ),
            grant=grant_from_row(row),
            dataset=dataset_from_row(row, prefix="d_"),
        )


def _next_version(tx: Transaction, name: str, current: int) -> int:
    """The version a dataset named `name` takes now, never one the name had before: a dataset
    deleted and registered again must not meet the free replays of the old one (they are keyed on
    name and version). Remembered in `dataset_versions`, which deletions leave alone."""
    row = tx.fetchone("SELECT last_version FROM dataset_versions WHERE name = ?", (name,))
    version = max(current, int(row["last_version"]) if row is not None else 0) + 1
    _remember_version(tx, name, version)
    return version


def _remember_version(tx: Transaction, name: str, version: int) -> None:
    tx.execute(
        "INSERT INTO dataset_versions (name, last_version) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version",
        (name, version),
    )


def _dataset_params(dataset: DatasetRecord) -> dict[str, object]:
    """What a dataset call's fingerprint covers (not the store-set version and time)."""
    return record_fields(dataset, leave_out=("version", "created_at"))
