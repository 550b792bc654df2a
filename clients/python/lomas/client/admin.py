"""The administrator's client (what `lomas-admin` uses): users, datasets, grants, budgets, archive.

Also reads the Lomas bulk-registration files (user and dataset collections) unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc

from lomas.admin.v1 import resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.client.admin_values import (
    DATA_FORMATS,
    approx_dp,
    decimal_text,
    format_from_path,
    local_source,
    postgres_source,
    pure_dp,
    rho_zcdp,
    s3_source,
    spark_source,
    url_source,
)
from lomas.client.errors import AlreadyExists, NotFound, from_rpc_error
from lomas.client.lomas_formats import read_dataset_collection, read_user_collection
from lomas.common.v1 import archive_pb2, dataset_pb2, privacy_pb2
from lomas.gateway.v1 import admin_pb2, admin_pb2_grpc

# The values an administrator sends are built with these (kept importable from here).
__all__ = [
    "DATA_FORMATS",
    "AdminClient",
    "approx_dp",
    "format_from_path",
    "local_source",
    "postgres_source",
    "pure_dp",
    "rho_zcdp",
    "s3_source",
    "spark_source",
    "url_source",
]

T = TypeVar("T")
NamedT = TypeVar("NamedT", resources_pb2.User, resources_pb2.Dataset)


def _dataset(
    name: str,
    source: dataset_pb2.DataSource,
    metadata: Mapping[str, Any],
    data_format: dataset_pb2.DataFormat.ValueType,
) -> resources_pb2.Dataset:
    """The dataset resource that registering and replacing a dataset both send."""
    return resources_pb2.Dataset(
        name=name, source=source, format=data_format, metadata_json=json.dumps(dict(metadata))
    )


def _by_name(items: Iterable[NamedT], name: str, kind: str, reason: str) -> NamedT:
    """The one of `items` called `name`, or NotFound with `reason`, naming it, when there is none
    (the admin API lists users and datasets; it has no call that gets one)."""
    for item in items:
        if item.name == name:
            return item
    raise NotFound("NOT_FOUND", reason, f"{kind} {name!r} does not exist", {})


class AdminClient:
    """A connection to a gateway's AdminService with an admin token."""

    def __init__(
        self, target: str, *, token: str, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self._channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, *, timeout: float = 60.0) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def _pages(self, method: Callable[..., Any], request: Any, field: str) -> Iterator[Any]:
        while True:
            response = self._call(method, request)
            yield from getattr(response, field)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    # Users
    def add_user(
        self, name: str, *, admin: bool = False, may_query: bool = True, request_id: str = ""
    ) -> resources_pb2.User:
        role = resources_pb2.ROLE_ADMIN if admin else resources_pb2.ROLE_RESEARCHER
        user = resources_pb2.User(name=name, role=role, may_query=may_query)
        request = admin_pb2.CreateUserRequest(user=user, request_id=request_id)
        return self._call(self._stub.CreateUser, request).user

    def remove_user(self, name: str, *, request_id: str = "") -> None:
        request = admin_pb2.DeleteUserRequest(name=name, request_id=request_id)
        self._call(self._stub.DeleteUser, request)

    def list_users(self) -> list[resources_pb2.User]:
        return list(self._pages(self._stub.ListUsers, admin_pb2.ListUsersRequest(), "users"))

    def get_user(self, name: str) -> resources_pb2.User:
        """One user (NotFound, USER_NOT_FOUND, naming it, when there is none)."""
        return _by_name(self.list_users(), name, "user", "USER_NOT_FOUND")

    # Datasets
    def add_dataset(
        self,
        name: str,
        source: dataset_pb2.DataSource,
        metadata: Mapping[str, Any],
        data_format: dataset_pb2.DataFormat.ValueType,
        *,
        request_id: str = "",
    ) -> resources_pb2.Dataset:
        """Register a dataset: where its data lives, in which format, and its metadata. The
        platform first checks that the source can be read and has the metadata's columns."""
        dataset = _dataset(name, source, metadata, data_format)
        return self._write_dataset(dataset, request_id, replace=False)

    def update_dataset(
        self,
        name: str,
        source: dataset_pb2.DataSource,
        metadata: Mapping[str, Any],
        data_format: dataset_pb2.DataFormat.ValueType,
        *,
        request_id: str = "",
    ) -> resources_pb2.Dataset:
        """Replace a dataset's source, format and metadata (checked as `add_dataset` checks them);
        its version goes up by one."""
        dataset = _dataset(name, source, metadata, data_format)
        return self._write_dataset(dataset, request_id, replace=True)

    def _write_dataset(
        self, dataset: resources_pb2.Dataset, request_id: str, *, replace: bool
    ) -> resources_pb2.Dataset:
        """CreateDataset, or UpdateDataset to `replace` it: the same request and response shape."""
        if replace:
            update = admin_pb2.UpdateDatasetRequest(dataset=dataset, request_id=request_id)
            return self._call(self._stub.UpdateDataset, update).dataset
        create = admin_pb2.CreateDatasetRequest(dataset=dataset, request_id=request_id)
        return self._call(self._stub.CreateDataset, create).dataset

    def remove_dataset(self, name: str, *, request_id: str = "") -> None:
        request = admin_pb2.DeleteDatasetRequest(name=name, request_id=request_id)
        self._call(self._stub.DeleteDataset, request)

    def list_datasets(self) -> list[resources_pb2.Dataset]:
        return list(
            self._pages(self._stub.ListDatasets, admin_pb2.ListDatasetsRequest(), "datasets")
        )

    def get_dataset(self, name: str) -> resources_pb2.Dataset:
        """One dataset (NotFound, DATASET_NOT_FOUND, naming it, when there is none)."""
        return _by_name(self.list_datasets(), name, "dataset", "DATASET_NOT_FOUND")

    # Grants and budgets
    def grant(
        self,
        user: str,
        dataset: str,
        allocation: privacy_pb2.PrivacyLoss,
        already_spent: privacy_pb2.PrivacyLoss | None = None,
        *,
        request_id: str = "",
    ) -> resources_pb2.Grant:
        request = admin_pb2.CreateGrantRequest(
            grant=resources_pb2.Grant(user=user, dataset=dataset, allocation=allocation),
            already_spent=already_spent,
            request_id=request_id,
        )
        return self._call(self._stub.CreateGrant, request).grant

    def revoke(self, user: str, dataset: str, *, request_id: str = "") -> None:
        request = admin_pb2.DeleteGrantRequest(user=user, dataset=dataset, request_id=request_id)
        self._call(self._stub.DeleteGrant, request)

    def list_grants(self, user: str = "") -> list[resources_pb2.Grant]:
        return list(
            self._pages(self._stub.ListGrants, admin_pb2.ListGrantsRequest(user=user), "grants")
        )

    def budgets(self, user: str, *, delta: str | Decimal = "") -> list[budget_pb2.Ledger]:
        """A user's ledgers; with `delta`, zCDP and pure-DP ones also show what is left as
        (epsilon, delta) in `remaining_at_delta`."""
        request = admin_pb2.ListLedgersRequest(
            user=user, delta=decimal_text(delta) if delta else ""
        )
        return list(self._pages(self._stub.ListLedgers, request, "ledgers"))

    def ledger(self, user: str, dataset: str, *, delta: str | Decimal = "") -> budget_pb2.Ledger:
        """One ledger; with `delta`, its remaining budget also as (epsilon, delta)."""
        request = admin_pb2.GetLedgerRequest(
            user=user, dataset=dataset, delta=decimal_text(delta) if delta else ""
        )
        return self._call(self._stub.GetLedger, request).ledger

    def ledger_history(self, user: str, dataset: str) -> list[budget_pb2.LedgerEntry]:
        """Every entry of a ledger, oldest first (its hash-chained history)."""
        request = admin_pb2.ListLedgerEntriesRequest(user=user, dataset=dataset, page_size=1000)
        return list(self._pages(self._stub.ListLedgerEntries, request, "entries"))

    def adjust_allocation(
        self,
        user: str,
        dataset: str,
        allocation: privacy_pb2.PrivacyLoss,
        *,
        reason: str = "",
        request_id: str = "",
    ) -> budget_pb2.Ledger:
        """Set a ledger's allocation (raise or lower it; never below what is spent or held)."""
        request = admin_pb2.AdjustAllocationRequest(
            user=user,
            dataset=dataset,
            allocation=allocation,
            reason=reason,
            request_id=request_id,
        )
        return self._call(self._stub.AdjustAllocation, request).ledger

    def freeze_user(
        self, name: str, *, reason: str = "", request_id: str = ""
    ) -> admin_pb2.FreezeUserResponse:
        """Stop a user from starting queries (Lomas `may_query` = false)."""
        request = admin_pb2.FreezeUserRequest(name=name, reason=reason, request_id=request_id)
        return self._call(self._stub.FreezeUser, request)

    def unfreeze_user(
        self, name: str, *, reason: str = "", request_id: str = ""
    ) -> admin_pb2.UnfreezeUserResponse:
        """Let a frozen user start queries again."""
        request = admin_pb2.UnfreezeUserRequest(name=name, reason=reason, request_id=request_id)
        return self._call(self._stub.UnfreezeUser, request)

    def set_dataset_cap(
        self,
        dataset: str,
        cap: privacy_pb2.PrivacyLoss | None,
        *,
        reason: str = "",
        request_id: str = "",
    ) -> budget_pb2.DatasetCap:
        """Bound what all users together may spend on a dataset (`cap=None` removes the bound)."""
        request = admin_pb2.SetDatasetCapRequest(
            dataset=dataset, cap=cap, reason=reason, request_id=request_id
        )
        return self._call(self._stub.SetDatasetCap, request).cap

    def dataset_cap(self, dataset: str) -> budget_pb2.DatasetCap:
        return self._call(
            self._stub.GetDatasetCap, admin_pb2.GetDatasetCapRequest(dataset=dataset)
        ).cap

    def archive(self, user: str = "", dataset: str = "") -> list[archive_pb2.ArchivedQuery]:
        request = admin_pb2.ListArchivedQueriesRequest(user=user, dataset=dataset)
        return list(self._pages(self._stub.ListArchivedQueries, request, "queries"))

    def verify_ledgers(self, *, timeout: float = 600.0) -> admin_pb2.VerifyLedgersResponse:
        """Recompute every ledger from its entries and check every hash chain (`problems` is
        empty when all is consistent)."""
        return self._call(
            self._stub.VerifyLedgers, admin_pb2.VerifyLedgersRequest(), timeout=timeout
        )

    # Lomas bulk files
    def load_user_collection(self, path: str | Path) -> list[str]:
        """Register users and their per-dataset budgets from a Lomas `user_collection.yaml`.

        Re-running it is safe: existing users and grants are left as they are. (`lomas-admin
        users import` also reports which ones differ from the file.)
        """
        done = []
        for user in read_user_collection(path):
            try:
                self.add_user(user.name, admin=user.admin, may_query=user.may_query)
            except AlreadyExists:
                pass
            for grant in user.grants:
                try:
                    self.grant(
                        user.name, grant.dataset, grant.allocation, already_spent=grant.spent
                    )
                except AlreadyExists:
                    pass
            done.append(user.name)
        return done

    def load_dataset_collection(self, path: str | Path) -> list[str]:
        """Register datasets from a Lomas `dataset_collection.yaml` (PATH_DB or S3_DB entries).

        Relative paths are read relative to the collection file, as Lomas administrators write them.
        Existing datasets are left as they are.
        """
        done = []
        for dataset in read_dataset_collection(path):
            try:
                self.add_dataset(dataset.name, dataset.source, dataset.metadata, dataset.format)
            except AlreadyExists:
                pass
            done.append(dataset.name)
        return done
