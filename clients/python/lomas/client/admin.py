"""The administrator's client (what `lomas-admin` uses): users, datasets, grants, budgets, archive.

Also reads the Lomas bulk-registration files (user and dataset collections) unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml

from lomas.admin.v1 import resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.client.errors import AlreadyExists, from_rpc_error
from lomas.common.v1 import archive_pb2, dataset_pb2, privacy_pb2
from lomas.gateway.v1 import admin_pb2, admin_pb2_grpc

T = TypeVar("T")

DATA_FORMATS: dict[str, dataset_pb2.DataFormat.ValueType] = {
    "csv": dataset_pb2.DATA_FORMAT_CSV,
    "parquet": dataset_pb2.DATA_FORMAT_PARQUET,
}


def _text(value: float | int | str | Decimal) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def approx_dp(
    epsilon: float | str | Decimal, delta: float | str | Decimal
) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(
        approx_dp=privacy_pb2.ApproxDp(epsilon=_text(epsilon), delta=_text(delta))
    )


def pure_dp(epsilon: float | str | Decimal) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(pure_dp=privacy_pb2.PureDp(epsilon=_text(epsilon)))


def rho_zcdp(rho: float | str | Decimal) -> privacy_pb2.PrivacyLoss:
    return privacy_pb2.PrivacyLoss(rho_zcdp=privacy_pb2.RhoZcdp(rho=_text(rho)))


def format_from_path(path: str) -> dataset_pb2.DataFormat.ValueType:
    suffix = path.rsplit(".", 1)[-1].lower()
    if suffix not in DATA_FORMATS:
        raise ValueError(
            f"cannot tell the format of {path!r}: use .csv or .parquet, or pass a format"
        )
    return DATA_FORMATS[suffix]


def local_source(path: str | Path) -> dataset_pb2.DataSource:
    return dataset_pb2.DataSource(local=dataset_pb2.LocalSource(path=str(Path(path).resolve())))


def url_source(url: str) -> dataset_pb2.DataSource:
    return dataset_pb2.DataSource(url=dataset_pb2.UrlSource(url=url))


def s3_source(
    bucket: str, key: str, endpoint_url: str = "", credentials_name: str = ""
) -> dataset_pb2.DataSource:
    return dataset_pb2.DataSource(
        s3=dataset_pb2.S3Source(
            bucket=bucket, key=key, endpoint_url=endpoint_url, credentials_name=credentials_name
        )
    )


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
        """Register a dataset: where its data lives, in which format, and its metadata."""
        request = admin_pb2.CreateDatasetRequest(
            dataset=_dataset(name, source, metadata, data_format), request_id=request_id
        )
        return self._call(self._stub.CreateDataset, request).dataset

    def update_dataset(
        self,
        name: str,
        source: dataset_pb2.DataSource,
        metadata: Mapping[str, Any],
        data_format: dataset_pb2.DataFormat.ValueType,
        *,
        request_id: str = "",
    ) -> resources_pb2.Dataset:
        """Replace a dataset's source, format and metadata; its version goes up by one."""
        request = admin_pb2.UpdateDatasetRequest(
            dataset=_dataset(name, source, metadata, data_format), request_id=request_id
        )
        return self._call(self._stub.UpdateDataset, request).dataset

    def remove_dataset(self, name: str, *, request_id: str = "") -> None:
        request = admin_pb2.DeleteDatasetRequest(name=name, request_id=request_id)
        self._call(self._stub.DeleteDataset, request)

    def list_datasets(self) -> list[resources_pb2.Dataset]:
        return list(
            self._pages(self._stub.ListDatasets, admin_pb2.ListDatasetsRequest(), "datasets")
        )

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
        request = admin_pb2.ListLedgersRequest(user=user, delta=_text(delta) if delta else "")
        return list(self._pages(self._stub.ListLedgers, request, "ledgers"))

    def ledger(self, user: str, dataset: str, *, delta: str | Decimal = "") -> budget_pb2.Ledger:
        """One ledger; with `delta`, its remaining budget also as (epsilon, delta)."""
        request = admin_pb2.GetLedgerRequest(
            user=user, dataset=dataset, delta=_text(delta) if delta else ""
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

        Re-running it is safe: identical users and grants are left as they are.
        """
        document = yaml.safe_load(Path(path).read_text())
        done = []
        for entry in document.get("users", []):
            name = entry["user_name"]
            try:
                self.add_user(name, may_query=bool(entry.get("may_query", True)))
            except AlreadyExists:
                pass
            for access in entry.get("datasets_list", []):
                allocation = approx_dp(access["initial_epsilon"], access["initial_delta"])
                spent = approx_dp(
                    access.get("total_spent_epsilon", 0.0), access.get("total_spent_delta", 0.0)
                )
                try:
                    self.grant(name, access["dataset_name"], allocation, already_spent=spent)
                except AlreadyExists:
                    pass
            done.append(name)
        return done

    def load_dataset_collection(self, path: str | Path) -> list[str]:
        """Register datasets from a Lomas `dataset_collection.yaml` (PATH_DB or S3_DB entries).

        Relative paths are read relative to the collection file, as Lomas administrators write them.
        """
        path = Path(path)
        document = yaml.safe_load(path.read_text())
        done = []
        for entry in document.get("datasets", []):
            access = entry["dataset_access"]
            source, location = _collection_source(access, path.parent)
            data_format = (
                DATA_FORMATS[access["format"].lower()]
                if "format" in access
                else format_from_path(location)
            )
            metadata = _collection_metadata(entry["metadata_access"], path.parent)
            try:
                self.add_dataset(entry["dataset_name"], source, metadata, data_format)
            except AlreadyExists:
                pass
            done.append(entry["dataset_name"])
        return done


def _collection_source(access: Mapping[str, Any], base: Path) -> tuple[dataset_pb2.DataSource, str]:
    kind = access.get("database_type")
    if kind == "PATH_DB":
        location = str(access["path"])
        if location.startswith(("http://", "https://")):
            return url_source(location), location
        return local_source(base / location), location
    if kind == "S3_DB":
        key = str(access["key"])
        return (
            s3_source(
                access["bucket"],
                key,
                access.get("endpoint_url", ""),
                access.get("credentials_name", ""),
            ),
            key,
        )
    raise ValueError(f"unsupported database_type {kind!r} (PATH_DB or S3_DB)")


def _collection_metadata(access: Mapping[str, Any], base: Path) -> dict[str, Any]:
    kind = access.get("database_type")
    if kind == "PATH_DB":
        location = str(access["path"])
        if location.startswith(("http://", "https://")):
            import urllib.request

            with urllib.request.urlopen(location, timeout=30) as response:  # noqa: S310 - admin-given URL
                return dict(yaml.safe_load(response.read()))
        return dict(yaml.safe_load((base / location).read_text()))
    if kind == "S3_DB":
        import boto3  # only administrators who register S3 metadata need it

        session = boto3.session.Session(
            aws_access_key_id=access.get("access_key_id"),
            aws_secret_access_key=access.get("secret_access_key"),
        )
        client = session.client("s3", endpoint_url=access.get("endpoint_url") or None)
        body = client.get_object(Bucket=access["bucket"], Key=access["key"])["Body"].read()
        return dict(yaml.safe_load(body))
    raise ValueError(f"unsupported metadata database_type {kind!r} (PATH_DB or S3_DB)")
