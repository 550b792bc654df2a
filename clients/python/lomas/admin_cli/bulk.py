"""Lomas collection files: bulk loads of users and datasets, and the whole platform exported to them,
imported from them, or emptied (Lomas' add_*_via_yaml, collection dump and drop)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from lomas.admin_cli.common import UsageError, refusal_text
from lomas.admin_cli.render import Output, count
from lomas.client.admin import AdminClient
from lomas.client.admin_collections import (
    ImportReport,
    ImportStopped,
    Outcome,
    drop_datasets,
    drop_users,
    export_collections,
    import_collections,
    import_datasets,
    import_users,
)
from lomas.client.lomas_formats import read_dataset_collection, read_user_collection

_T = TypeVar("_T")


def users_import(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas add_users_via_yaml: users and their budgets from a user_collection.yaml."""
    entries = _read(lambda: read_user_collection(args.file))
    return _imported(lambda report: import_users(admin, entries, report))


def datasets_import(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas add_datasets_via_yaml: datasets from a dataset_collection.yaml."""
    entries = _read(lambda: read_dataset_collection(args.file))
    return _imported(lambda report: import_datasets(admin, entries, report, update=args.update))


def collections_import(admin: AdminClient, args: argparse.Namespace) -> Output:
    """What `collections export` wrote: datasets and caps, then users and budgets."""
    return _imported(
        lambda report: import_collections(admin, args.directory, update=args.update, report=report)
    )


def collections_export(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas' collection dump: every user, budget, dataset and cap as Lomas-format YAML."""
    try:
        export = export_collections(admin, args.directory)
    except OSError as error:
        raise UsageError(f"cannot write into {args.directory}: {error.strerror}") from None
    text = (
        f"exported {count(export.users, 'user')} ({count(export.grants, 'budget')}) and "
        f"{count(export.datasets, 'dataset')} to {args.directory}"
    )
    return Output(
        text,
        {
            "directory": str(args.directory),
            "users": export.users,
            "grants": export.grants,
            "datasets": export.datasets,
            "files": [str(path) for path in export.files],
        },
    )


def collections_drop(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas drop_collection for users or datasets (ledgers and the archive keep their history)."""
    if not args.yes:
        raise UsageError(
            f"this removes every {args.collection[:-1]}"
            + (" except administrators" if args.collection == "users" else "")
            + ": add --yes to confirm"
        )
    removed = drop_users(admin) if args.collection == "users" else drop_datasets(admin)
    noun = args.collection[:-1]
    names = f": {', '.join(removed)}" if removed else ""
    kept = " (administrators stay)" if args.collection == "users" else ""
    return Output(
        f"removed {count(len(removed), noun)}{names}{kept}",
        {"removed": {args.collection: removed}},
    )


def _read(read: Callable[[], list[_T]]) -> list[_T]:
    try:
        return read()
    except ValueError as error:
        raise UsageError(str(error)) from None


def _imported(run: Callable[[ImportReport], object]) -> Output:
    """Run an import that records its outcomes in the report it is given, and print them; a
    refusal stops it (exit 1) with what was done before."""
    report = ImportReport()
    try:
        run(report)
    except ValueError as error:
        raise UsageError(str(error)) from None
    except ImportStopped as stopped:
        return Output(
            _report_text(report) or "nothing imported",
            _report_data(report),
            code=1,
            problem=(
                f"{stopped.entry} was refused: {refusal_text(stopped.error)} (what is listed "
                "above was imported; running the import again skips it)"
            ),
        )
    return Output(_report_text(report) or "nothing to import", _report_data(report))


def _report_data(report: ImportReport) -> dict[str, dict[str, list[str]]]:
    return {
        kind: getattr(report, kind).as_dict() for kind in ("datasets", "caps", "users", "grants")
    }


def _report_text(report: ImportReport) -> str:
    lines = []
    for kind, noun in (
        ("datasets", "dataset"),
        ("caps", "dataset cap"),
        ("users", "user"),
        ("grants", "budget"),
    ):
        outcome: Outcome = getattr(report, kind)
        parts = [
            _part(outcome.added, noun, "added"),
            _part(outcome.updated, noun, "updated"),
            _part(outcome.unchanged, noun, "already there"),
            _part(outcome.differing, noun, "exist with other values and were left as they are"),
        ]
        lines += [part for part in parts if part]
    return "\n".join(lines)


def _part(names: list[str], noun: str, what: str) -> str:
    if not names:
        return ""
    if what.startswith("exist") and len(names) == 1:
        what = "exists with other values and was left as it is"
    return f"{count(len(names), noun)} {what}: {', '.join(names)}"
