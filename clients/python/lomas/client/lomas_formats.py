"""Lomas collection files, read and written: `user_collection.yaml` (users and their budgets),
`dataset_collection.yaml` (datasets: where the data and the metadata live) and the metadata files.

Reading takes the files Lomas administrators write, unchanged. Writing produces the same form, plus a
few keys Lomas does not have, written only where a value needs them, so that nothing is lost:

* a user: `role: admin` for an administrator;
* a budget: `privacy_definition: pure_dp` (epsilon only) or `rho_zcdp` (`initial_rho`,
  `total_spent_rho`); without the key a budget is (epsilon, delta) as in Lomas;
* a dataset: `format` in `dataset_access` when the location's extension does not tell it, and
  `privacy_cap` (what all users together may spend on the dataset).

Budgets are exact decimals: a value that a YAML float holds exactly is written as a number, as
Lomas writes it, and any other as a quoted decimal string, which reading takes as it is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from lomas.client.admin_values import (
    DATA_FORMATS,
    format_from_path,
    local_source,
    loss_components,
    loss_from_components,
    s3_source,
    url_source,
)
from lomas.common.v1 import dataset_pb2, privacy_pb2

USER_COLLECTION = "user_collection.yaml"
DATASET_COLLECTION = "dataset_collection.yaml"
METADATA_FOLDER = "metadata"
_LOSS_KINDS = ("approx_dp", "pure_dp", "rho_zcdp")
# The Lomas keys of a budget, by privacy definition: (initial, spent) per component.
_BUDGET_KEYS = {
    "epsilon": ("initial_epsilon", "total_spent_epsilon"),
    "delta": ("initial_delta", "total_spent_delta"),
    "rho": ("initial_rho", "total_spent_rho"),
}
_COMPONENTS = {"approx_dp": ("epsilon", "delta"), "pure_dp": ("epsilon",), "rho_zcdp": ("rho",)}


@dataclass(frozen=True)
class GrantEntry:
    """One budget of a user (a grant on a dataset and what was spent of it)."""

    dataset: str
    allocation: privacy_pb2.PrivacyLoss
    spent: privacy_pb2.PrivacyLoss


@dataclass(frozen=True)
class UserEntry:
    """One user of a user collection."""

    name: str
    may_query: bool = True
    admin: bool = False
    grants: tuple[GrantEntry, ...] = ()


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a dataset collection, with its metadata read."""

    name: str
    source: dataset_pb2.DataSource
    format: dataset_pb2.DataFormat.ValueType
    metadata: dict[str, Any] = field(compare=False)
    cap: privacy_pb2.PrivacyLoss | None = None


# -- reading ---------------------------------------------------------------------------------------


def read_user_collection(path: str | Path) -> list[UserEntry]:
    """The users of a Lomas `user_collection.yaml` (ValueError for a malformed file)."""
    path = Path(path)
    document = _read_yaml(path)
    return [_user(entry, f"{path}: user {number}") for number, entry in _entries(document, "users")]


def read_dataset_collection(path: str | Path) -> list[DatasetEntry]:
    """The datasets of a Lomas `dataset_collection.yaml` (PATH_DB or S3_DB entries), each with its
    metadata read. Relative paths are relative to the collection file, as Lomas administrators
    write them."""
    path = Path(path)
    document = _read_yaml(path)
    return [
        _dataset(entry, path.parent, f"{path}: dataset {number}")
        for number, entry in _entries(document, "datasets")
    ]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None


def _entries(document: Any, key: str) -> Iterable[tuple[int, Mapping[str, Any]]]:
    if not isinstance(document, Mapping) or not isinstance(document.get(key) or [], list):
        raise ValueError(f"a Lomas collection is a mapping with a list under {key!r}")
    for number, entry in enumerate(document.get(key) or [], start=1):
        if not isinstance(entry, Mapping):
            raise ValueError(f"entry {number} under {key!r} is not a mapping")
        yield number, entry


def _user(entry: Mapping[str, Any], where: str) -> UserEntry:
    name = _required(entry, "user_name", where)
    grants = tuple(
        _grant(access, f"{where} ({name}), budget {number}")
        for number, access in enumerate(entry.get("datasets_list") or [], start=1)
    )
    return UserEntry(
        name=name,
        may_query=bool(entry.get("may_query", True)),
        admin=str(entry.get("role", "researcher")).lower() == "admin",
        grants=grants,
    )


def _grant(access: Mapping[str, Any], where: str) -> GrantEntry:
    kind = str(access.get("privacy_definition", "approx_dp")).lower()
    if kind not in _COMPONENTS:
        raise ValueError(f"{where}: unknown privacy_definition {kind!r} ({', '.join(_LOSS_KINDS)})")
    initial: dict[str, float | str | Decimal] = {}
    spent: dict[str, float | str | Decimal] = {}
    for component in _COMPONENTS[kind]:
        initial_key, spent_key = _BUDGET_KEYS[component]
        initial[component] = _required(access, initial_key, where)
        spent[component] = access.get(spent_key, 0.0)
    return GrantEntry(
        dataset=_required(access, "dataset_name", where),
        allocation=loss_from_components(kind, initial),
        spent=loss_from_components(kind, spent),
    )


def _dataset(entry: Mapping[str, Any], base: Path, where: str) -> DatasetEntry:
    name = _required(entry, "dataset_name", where)
    access = entry.get("dataset_access")
    metadata_access = entry.get("metadata_access")
    if not isinstance(access, Mapping) or not isinstance(metadata_access, Mapping):
        raise ValueError(f"{where} ({name}) needs dataset_access and metadata_access mappings")
    source, location = _collection_source(access, base)
    try:
        data_format = (
            DATA_FORMATS[str(access["format"]).lower()]
            if "format" in access
            else format_from_path(location)
        )
    except KeyError:
        raise ValueError(f"{where} ({name}): format is csv or parquet") from None
    cap = entry.get("privacy_cap")
    return DatasetEntry(
        name=name,
        source=source,
        format=data_format,
        metadata=_collection_metadata(metadata_access, base),
        cap=_cap(cap, f"{where} ({name})") if cap is not None else None,
    )


def _cap(cap: Any, where: str) -> privacy_pb2.PrivacyLoss:
    if not isinstance(cap, Mapping):
        raise ValueError(f"{where}: privacy_cap is a mapping")
    kind = str(cap.get("privacy_definition", "approx_dp")).lower()
    if kind not in _COMPONENTS:
        raise ValueError(f"{where}: unknown privacy_definition {kind!r} ({', '.join(_LOSS_KINDS)})")
    return loss_from_components(
        kind, {component: _required(cap, component, where) for component in _COMPONENTS[kind]}
    )


def _required(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry or entry[key] is None:
        raise ValueError(f"{where}: {key!r} is missing")
    return entry[key]


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
        document = _read_yaml(base / location)
        if not isinstance(document, Mapping):
            raise ValueError(f"{base / location} does not hold metadata (a mapping)")
        return dict(document)
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


# -- writing ---------------------------------------------------------------------------------------


def write_collections(
    directory: str | Path, users: Iterable[UserEntry], datasets: Iterable[DatasetEntry]
) -> list[Path]:
    """Write `user_collection.yaml`, `dataset_collection.yaml` and one metadata file per dataset
    (under `metadata/`) into `directory`; returns the files written."""
    directory = Path(directory)
    (directory / METADATA_FOLDER).mkdir(parents=True, exist_ok=True)
    written = []
    dataset_entries = []
    for dataset, file_name in _metadata_file_names(sorted(datasets, key=lambda d: d.name)):
        metadata_path = directory / METADATA_FOLDER / file_name
        metadata_path.write_text(_dump(dataset.metadata))
        written.append(metadata_path)
        dataset_entries.append(_dataset_document(dataset, f"{METADATA_FOLDER}/{file_name}"))
    datasets_path = directory / DATASET_COLLECTION
    datasets_path.write_text(_dump({"datasets": dataset_entries}))
    users_path = directory / USER_COLLECTION
    user_entries = [_user_document(user) for user in sorted(users, key=lambda u: u.name)]
    users_path.write_text(_dump({"users": user_entries}))
    return [users_path, datasets_path, *written]


def _dump(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _metadata_file_names(datasets: list[DatasetEntry]) -> Iterable[tuple[DatasetEntry, str]]:
    """Each dataset with a file name of its own, made of the characters a file name may hold."""
    taken: set[str] = set()
    for dataset in datasets:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", dataset.name).lstrip(".") or "dataset"
        name, number = f"{stem}_metadata.yaml", 2
        while name.lower() in taken:
            name, number = f"{stem}_{number}_metadata.yaml", number + 1
        taken.add(name.lower())
        yield dataset, name


def _user_document(user: UserEntry) -> dict[str, Any]:
    document: dict[str, Any] = {"user_name": user.name, "may_query": user.may_query}
    if user.admin:
        document["role"] = "admin"
    document["datasets_list"] = [
        _grant_document(grant) for grant in sorted(user.grants, key=lambda g: g.dataset)
    ]
    return document


def _grant_document(grant: GrantEntry) -> dict[str, Any]:
    kind = grant.allocation.WhichOneof("loss") or "approx_dp"
    document: dict[str, Any] = {"dataset_name": grant.dataset}
    if kind != "approx_dp":
        document["privacy_definition"] = kind
    initial, spent = loss_components(grant.allocation), loss_components(grant.spent)
    for component in _COMPONENTS[kind]:
        document[_BUDGET_KEYS[component][0]] = yaml_decimal(initial.get(component, Decimal(0)))
    if kind == "pure_dp":  # Lomas reads (epsilon, delta) budgets: a pure-DP budget has delta 0
        document["initial_delta"] = 0.0
    for component in _COMPONENTS[kind]:
        document[_BUDGET_KEYS[component][1]] = yaml_decimal(spent.get(component, Decimal(0)))
    if kind == "pure_dp":
        document["total_spent_delta"] = 0.0
    return document


def _dataset_document(dataset: DatasetEntry, metadata_path: str) -> dict[str, Any]:
    kind = dataset.source.WhichOneof("location")
    access: dict[str, Any]
    if kind == "s3":
        s3 = dataset.source.s3
        access = {"database_type": "S3_DB", "bucket": s3.bucket, "key": s3.key}
        if s3.endpoint_url:
            access["endpoint_url"] = s3.endpoint_url
        if s3.credentials_name:
            access["credentials_name"] = s3.credentials_name
        location = s3.key
    else:
        location = dataset.source.url.url if kind == "url" else dataset.source.local.path
        access = {"database_type": "PATH_DB", "path": location}
    if _format_from_location(location) != dataset.format:
        access["format"] = _format_name(dataset.format)
    document: dict[str, Any] = {
        "dataset_name": dataset.name,
        "dataset_access": access,
        "metadata_access": {"database_type": "PATH_DB", "path": metadata_path},
    }
    if dataset.cap is not None:
        document["privacy_cap"] = {
            "privacy_definition": dataset.cap.WhichOneof("loss") or "approx_dp",
            **{name: yaml_decimal(value) for name, value in loss_components(dataset.cap).items()},
        }
    return document


def _format_from_location(location: str) -> dataset_pb2.DataFormat.ValueType | None:
    try:
        return format_from_path(location)
    except ValueError:
        return None


def _format_name(data_format: dataset_pb2.DataFormat.ValueType) -> str:
    return {value: name for name, value in DATA_FORMATS.items()}[data_format]


def yaml_decimal(value: Decimal) -> float | str:
    """`value` as YAML writes it: a number when a float holds it exactly (Lomas' form), else its
    exact decimal text (a YAML string)."""
    as_float = float(value)
    if math.isfinite(as_float) and Decimal(repr(as_float)) == value:
        return as_float
    return format(value, "f")


def metadata_from_json(metadata_json: str) -> dict[str, Any]:
    """A stored dataset's metadata (its `metadata_json`), keys in their stored order."""
    document = json.loads(metadata_json or "{}")
    return dict(document) if isinstance(document, dict) else {}
