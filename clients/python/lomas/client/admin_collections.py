"""A whole platform's users, budgets and datasets to and from Lomas collection files (the
equivalents of Lomas' collection dump and drop, and of its bulk loads).

`export_collections` writes what `import_collections` reads back: every user (name, role,
may_query), each grant's budget (allocation and spend, in its privacy definition), every dataset
(source, format, metadata) and each dataset cap. A budget's spend includes what queries in flight
hold (a reservation may still become a charge, so an export never under-counts a spend). Ledger
histories and the query archive stay with the platform that wrote them.

An import adds what is missing and leaves what exists as it is, reporting each name as added,
unchanged (it already says what the file says) or differing (it exists and says something else);
datasets that differ are replaced when asked (`update`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from lomas.admin.v1 import resources_pb2
from lomas.budget.v1 import budget_pb2
from lomas.client.admin import AdminClient
from lomas.client.admin_values import loss_components, loss_from_components
from lomas.client.errors import LomasError
from lomas.client.lomas_formats import (
    DATASET_COLLECTION,
    USER_COLLECTION,
    DatasetEntry,
    GrantEntry,
    UserEntry,
    metadata_from_json,
    read_dataset_collection,
    read_user_collection,
    write_collections,
)
from lomas.common.v1 import privacy_pb2


@dataclass
class Outcome:
    """What an import did with the names of one kind (users, grants as "user/dataset", datasets,
    dataset caps)."""

    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "added": self.added,
            "unchanged": self.unchanged,
            "updated": self.updated,
            "differing": self.differing,
        }


@dataclass
class ImportReport:
    """An import's outcomes so far (complete unless an error stopped it)."""

    datasets: Outcome = field(default_factory=Outcome)
    caps: Outcome = field(default_factory=Outcome)
    users: Outcome = field(default_factory=Outcome)
    grants: Outcome = field(default_factory=Outcome)


class ImportStopped(Exception):
    """The platform refused one entry of an import: what was done before it stays done."""

    def __init__(self, entry: str, error: LomasError) -> None:
        super().__init__(f"{entry}: {error}")
        self.entry = entry
        self.error = error


@dataclass(frozen=True)
class Export:
    """What an export wrote."""

    users: int
    grants: int
    datasets: int
    files: list[Path]


# -- export ----------------------------------------------------------------------------------------


def export_collections(admin: AdminClient, directory: str | Path) -> Export:
    """Write every user, budget, dataset and cap into `directory` (see the module docstring)."""
    users = admin.list_users()
    grants = admin.list_grants()
    datasets = admin.list_datasets()
    granted = {grant.user for grant in grants}
    ledgers = {
        (ledger.user, ledger.dataset): ledger
        for user in users
        if user.name in granted
        for ledger in admin.budgets(user.name)
    }
    by_user: dict[str, list[GrantEntry]] = {}
    for grant in grants:
        ledger = ledgers[(grant.user, grant.dataset)]
        spent = _sum(ledger.spent, ledger.reserved)
        by_user.setdefault(grant.user, []).append(
            GrantEntry(grant.dataset, allocation=ledger.allocation, spent=spent)
        )
    user_entries = [
        UserEntry(
            name=user.name,
            may_query=user.may_query,
            admin=user.role == resources_pb2.ROLE_ADMIN,
            grants=tuple(by_user.get(user.name, ())),
        )
        for user in users
    ]
    dataset_entries = []
    for dataset in datasets:
        cap = admin.dataset_cap(dataset.name)
        dataset_entries.append(
            DatasetEntry(
                name=dataset.name,
                source=dataset.source,
                format=dataset.format,
                metadata=metadata_from_json(dataset.metadata_json),
                cap=cap.cap if cap.HasField("cap") else None,
            )
        )
    files = write_collections(directory, user_entries, dataset_entries)
    return Export(len(user_entries), len(grants), len(dataset_entries), files)


def _sum(a: privacy_pb2.PrivacyLoss, b: privacy_pb2.PrivacyLoss) -> privacy_pb2.PrivacyLoss:
    kind = a.WhichOneof("loss") or b.WhichOneof("loss") or "approx_dp"
    left, right = loss_components(a), loss_components(b)
    names = set(left) | set(right)
    return loss_from_components(
        kind, {name: left.get(name, Decimal(0)) + right.get(name, Decimal(0)) for name in names}
    )


# -- import ----------------------------------------------------------------------------------------


def import_collections(
    admin: AdminClient,
    directory: str | Path,
    *,
    update: bool = False,
    report: ImportReport | None = None,
) -> ImportReport:
    """Import what `export_collections` wrote (or any Lomas collection files in a directory):
    datasets and caps first, then users and their budgets. `report` (a fresh one by default)
    records each outcome as it happens, so it tells what was done when ImportStopped is raised."""
    directory = Path(directory)
    datasets_file, users_file = directory / DATASET_COLLECTION, directory / USER_COLLECTION
    if not datasets_file.exists() and not users_file.exists():
        raise ValueError(f"{directory} holds neither {DATASET_COLLECTION} nor {USER_COLLECTION}")
    datasets = read_dataset_collection(datasets_file) if datasets_file.exists() else []
    users = read_user_collection(users_file) if users_file.exists() else []
    report = report if report is not None else ImportReport()
    import_datasets(admin, datasets, report, update=update)
    import_users(admin, users, report)
    return report


def import_datasets(
    admin: AdminClient,
    entries: Iterable[DatasetEntry],
    report: ImportReport,
    *,
    update: bool = False,
) -> None:
    """Register the datasets that do not exist (and their caps); replace those that differ when
    `update` is set. Raises ImportStopped at the first entry the platform refuses."""
    existing = {dataset.name: dataset for dataset in admin.list_datasets()}
    for entry in entries:
        current = existing.get(entry.name)
        try:
            if current is None:
                admin.add_dataset(entry.name, entry.source, entry.metadata, entry.format)
                report.datasets.added.append(entry.name)
            elif _same_dataset(current, entry):
                report.datasets.unchanged.append(entry.name)
            elif update:
                admin.update_dataset(entry.name, entry.source, entry.metadata, entry.format)
                report.datasets.updated.append(entry.name)
            else:
                report.datasets.differing.append(entry.name)
            if entry.cap is not None:
                _import_cap(admin, entry.name, entry.cap, report.caps, update=update)
        except LomasError as error:
            raise ImportStopped(f"dataset {entry.name!r}", error) from None


def _import_cap(
    admin: AdminClient,
    dataset: str,
    cap: privacy_pb2.PrivacyLoss,
    outcome: Outcome,
    *,
    update: bool,
) -> None:
    current = admin.dataset_cap(dataset)
    if not current.HasField("cap"):
        admin.set_dataset_cap(dataset, cap, reason="lomas-admin import")
        outcome.added.append(dataset)
    elif _same_loss(current.cap, cap):
        outcome.unchanged.append(dataset)
    elif update:
        admin.set_dataset_cap(dataset, cap, reason="lomas-admin import")
        outcome.updated.append(dataset)
    else:
        outcome.differing.append(dataset)


def import_users(admin: AdminClient, entries: Iterable[UserEntry], report: ImportReport) -> None:
    """Add the users and grants that do not exist (a grant with its spend imported); existing
    ones are left as they are. Raises ImportStopped at the first entry the platform refuses."""
    users = {user.name: user for user in admin.list_users()}
    grants = {(grant.user, grant.dataset) for grant in admin.list_grants()}
    for entry in entries:
        current = users.get(entry.name)
        try:
            if current is None:
                admin.add_user(entry.name, admin=entry.admin, may_query=entry.may_query)
                report.users.added.append(entry.name)
            elif (current.role == resources_pb2.ROLE_ADMIN) == entry.admin and (
                current.may_query == entry.may_query
            ):
                report.users.unchanged.append(entry.name)
            else:
                report.users.differing.append(entry.name)
        except LomasError as error:
            raise ImportStopped(f"user {entry.name!r}", error) from None
        ledgers = (
            {ledger.dataset: ledger for ledger in admin.budgets(entry.name)}
            if current is not None
            else {}
        )
        for grant in entry.grants:
            name = f"{entry.name}/{grant.dataset}"
            try:
                if (entry.name, grant.dataset) not in grants:
                    admin.grant(
                        entry.name, grant.dataset, grant.allocation, already_spent=grant.spent
                    )
                    report.grants.added.append(name)
                elif grant.dataset in ledgers and _same_budget(ledgers[grant.dataset], grant):
                    report.grants.unchanged.append(name)
                else:
                    report.grants.differing.append(name)
            except LomasError as error:
                raise ImportStopped(f"the budget of {name!r}", error) from None


# -- drop ------------------------------------------------------------------------------------------


def drop_users(admin: AdminClient) -> list[str]:
    """Remove every researcher (administrators stay, so the caller keeps its access); their
    ledgers and archived queries keep their history."""
    removed = []
    for user in admin.list_users():
        if user.role != resources_pb2.ROLE_ADMIN:
            admin.remove_user(user.name)
            removed.append(user.name)
    return removed


def drop_datasets(admin: AdminClient) -> list[str]:
    """Remove every dataset (and the grants on it); ledgers and the archive keep their history."""
    removed = []
    for dataset in admin.list_datasets():
        admin.remove_dataset(dataset.name)
        removed.append(dataset.name)
    return removed


# -- comparing -------------------------------------------------------------------------------------


def _same_dataset(current: resources_pb2.Dataset, entry: DatasetEntry) -> bool:
    """Whether a stored dataset already says what the entry says. The platform stores metadata in
    normalised form (defaults written out, integral numbers as integers), so the entry's metadata
    matches when every value it gives is the stored one."""
    return (
        current.source == entry.source
        and current.format == entry.format
        and _covers(metadata_from_json(current.metadata_json), _plain(entry.metadata))
    )


def _plain(document: Mapping[str, Any]) -> Any:
    """The metadata as it travels (JSON: YAML dates become text)."""
    return json.loads(json.dumps(dict(document), default=str))


def _covers(stored: Any, given: Any) -> bool:
    if isinstance(given, dict):
        return isinstance(stored, dict) and all(
            key in stored and _covers(stored[key], value) for key, value in given.items()
        )
    if isinstance(given, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(given)
            and all(_covers(s, g) for s, g in zip(stored, given, strict=True))
        )
    if isinstance(given, bool) or isinstance(stored, bool):
        return stored is given
    if isinstance(given, int | float) and isinstance(stored, int | float):
        return Decimal(repr(stored)) == Decimal(repr(given))
    return bool(stored == given)


def _same_loss(a: privacy_pb2.PrivacyLoss, b: privacy_pb2.PrivacyLoss) -> bool:
    return a.WhichOneof("loss") == b.WhichOneof("loss") and loss_components(a) == loss_components(b)


def _same_budget(ledger: budget_pb2.Ledger, grant: GrantEntry) -> bool:
    return _same_loss(ledger.allocation, grant.allocation) and _same_loss(
        _sum(ledger.spent, ledger.reserved), grant.spent
    )
