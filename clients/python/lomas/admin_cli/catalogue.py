"""Datasets (where the data lives, its format, its metadata) and their caps."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

import lomas.admin_cli.render as render
from lomas.admin_cli.common import (
    UsageError,
    exists_or_error,
    listing_command,
    loss_from_options,
    removal_command,
)
from lomas.admin_cli.render import Output, count
from lomas.budget.v1 import budget_pb2
from lomas.client.admin import (
    DATA_FORMATS,
    AdminClient,
    format_from_path,
    local_source,
    postgres_source,
    s3_source,
    spark_source,
    url_source,
)
from lomas.client.lomas_formats import metadata_from_json
from lomas.common.v1 import dataset_pb2


def datasets_write(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas add_dataset (`add`), and a new version of a dataset (`update`). The platform reads
    the source's header or schema first: nothing is registered that workers could not load."""
    source, location = _source(args)
    kind = source.WhichOneof("location")
    if args.format:
        fmt = DATA_FORMATS[args.format]
    elif kind in _SOURCE_FORMATS:
        fmt = DATA_FORMATS[_SOURCE_FORMATS[kind]]
    else:
        try:
            fmt = format_from_path(location)
        except ValueError as error:
            raise UsageError(str(error)) from None
    metadata = _metadata_file(args.metadata)
    if args.action == "add":
        dataset = admin.add_dataset(args.name, source, metadata, fmt)
        verb = "added"
    else:
        dataset = admin.update_dataset(args.name, source, metadata, fmt)
        verb = "updated"
    columns = len(metadata_from_json(dataset.metadata_json).get("columns") or {})
    return Output(
        f"{verb} dataset {dataset.name!r} (version {dataset.version}): "
        f"{render.data_format(dataset.format)} at {render.source_text(dataset.source)}, "
        f"{count(columns, 'column')}",
        render.data(dataset),
    )


# The format of sources that are not files.
_SOURCE_FORMATS = {"postgres": "table", "spark": "parquet"}


def _source(args: argparse.Namespace) -> tuple[dataset_pb2.DataSource, str]:
    if args.postgres_credentials and not args.postgres_table:
        raise UsageError("--postgres-credentials goes with --postgres-table")
    if args.path:
        return local_source(args.path), args.path
    if args.url:
        return url_source(args.url), args.url
    if args.postgres_table:
        schema, dot, table = args.postgres_table.partition(".")
        if not (dot and schema and table):
            raise UsageError(
                "--postgres-table takes SCHEMA.TABLE (split at the first dot), for example "
                "public.penguins"
            )
        if not args.postgres_credentials:
            raise UsageError(
                "--postgres-table needs --postgres-credentials (the name of the connection in "
                "the workers' secrets)"
            )
        return postgres_source(args.postgres_credentials, schema, table), args.postgres_table
    if args.spark_folder:
        return spark_source(args.spark_folder), args.spark_folder
    if not args.s3_key:
        raise UsageError("--s3-bucket needs --s3-key (the object's key in the bucket)")
    source = s3_source(args.s3_bucket, args.s3_key, args.s3_endpoint, args.s3_credentials)
    return source, args.s3_key


def _metadata_file(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UsageError(f"cannot read the metadata file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"the metadata file {path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise UsageError(f"the metadata file {path} does not hold a mapping")
    return document


# Lomas del_dataset and get_list_of_datasets.
datasets_remove = removal_command(AdminClient.remove_dataset, "dataset", "the grants on it")
datasets_list = listing_command(AdminClient.list_datasets, render.datasets_table, "dataset")


def datasets_show(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas show_dataset: where the data lives, its format, version and columns."""
    dataset = admin.get_dataset(args.name)
    metadata = metadata_from_json(dataset.metadata_json)
    columns = metadata.get("columns") or {}
    about = render.fields(
        [
            ("dataset", dataset.name),
            ("format", render.data_format(dataset.format)),
            ("source", render.source_text(dataset.source)),
            ("version", str(dataset.version)),
            ("created", render.when(dataset.create_time)),
            ("rows", str(metadata.get("rows", ""))),
            (count(len(columns), "column"), ", ".join(columns)),
        ]
    )
    return Output(about, render.data(dataset))


def datasets_metadata(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas show_metadata: the metadata as YAML (an object with --json)."""
    dataset = admin.get_dataset(args.name)
    return Output(
        render.metadata_yaml(dataset.metadata_json), metadata_from_json(dataset.metadata_json)
    )


def caps_set(admin: AdminClient, args: argparse.Namespace) -> Output:
    cap = admin.set_dataset_cap(args.dataset, loss_from_options(args), reason=args.reason)
    return Output(_cap_text(cap), render.data(cap))


def caps_remove(admin: AdminClient, args: argparse.Namespace) -> Output:
    cap = admin.set_dataset_cap(args.dataset, None, reason=args.reason)
    return Output(f"removed the cap of dataset {args.dataset!r}", render.data(cap))


def caps_show(admin: AdminClient, args: argparse.Namespace) -> Output:
    cap = admin.dataset_cap(args.dataset)
    if not cap.HasField("cap"):
        exists_or_error(admin, dataset=args.dataset)  # the ledger knows no dataset names
    return Output(_cap_text(cap), render.data(cap))


def _cap_text(cap: budget_pb2.DatasetCap) -> str:
    if not cap.HasField("cap"):
        return f"dataset {cap.dataset!r} has no cap"
    return render.fields(
        [
            ("dataset", cap.dataset),
            ("cap", f"{render.loss_kind(cap.cap)} {render.loss(cap.cap)}"),
            ("used", render.loss(cap.used)),
            ("remaining", render.loss(cap.remaining)),
            ("set by", f"{cap.actor} {render.when(cap.update_time)}".strip()),
            ("reason", cap.reason),
        ]
    )
