"""`lomas-admin`: administer a Lomas mesh through its gateway (needs an admin token).

The token comes from --token, --token-file or the LOMAS_TOKEN environment variable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from lomas.client.admin import (
    DATA_FORMATS,
    AdminClient,
    approx_dp,
    format_from_path,
    local_source,
    pure_dp,
    rho_zcdp,
    s3_source,
    url_source,
)
from lomas.client.errors import LomasError
from lomas.common.v1 import archive_pb2


def _print(value: Message | Sequence[Message] | dict[str, Any]) -> None:
    def plain(item: Any) -> Any:
        if isinstance(item, Message):
            data = json_format.MessageToDict(item, preserving_proto_field_name=True)
            if isinstance(item, archive_pb2.ArchivedQuery) and item.release:
                data["release"] = f"<{len(item.release)} bytes of Arrow IPC>"
            return data
        return item

    payload = [plain(v) for v in value] if isinstance(value, Sequence) else plain(value)
    print(json.dumps(payload, indent=2, sort_keys=True))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lomas-admin", description=__doc__)
    parser.add_argument("--target", default=os.environ.get("LOMAS_TARGET", "localhost:50051"))
    parser.add_argument("--token", default=os.environ.get("LOMAS_TOKEN", ""))
    parser.add_argument("--token-file", type=Path)
    groups = parser.add_subparsers(dest="group", required=True)

    users = groups.add_parser("users", help="add, remove or list users").add_subparsers(
        dest="action", required=True
    )
    add_user = users.add_parser("add")
    add_user.add_argument("name")
    add_user.add_argument("--admin", action="store_true", help="give the admin role")
    add_user.add_argument("--no-query", action="store_true", help="may not run queries")
    users.add_parser("remove").add_argument("name")
    users.add_parser("list")
    for verb, what in (
        ("freeze", "stop a user from starting queries (Lomas may_query)"),
        ("unfreeze", "let a frozen user start queries again"),
    ):
        toggle = users.add_parser(verb, help=what)
        toggle.add_argument("name")
        toggle.add_argument("--reason", default="", help="recorded in each of the user's ledgers")

    datasets = groups.add_parser(
        "datasets", help="add, update, remove or list datasets"
    ).add_subparsers(dest="action", required=True)
    for verb in ("add", "update"):  # update replaces source, format and metadata (new version)
        add_dataset = datasets.add_parser(verb)
        add_dataset.add_argument("name")
        where = add_dataset.add_mutually_exclusive_group(required=True)
        where.add_argument("--path", help="a file on the workers' file system")
        where.add_argument("--url", help="an HTTP(S) URL")
        where.add_argument("--s3-bucket")
        add_dataset.add_argument("--s3-key")
        add_dataset.add_argument("--s3-endpoint", default="")
        add_dataset.add_argument(
            "--s3-credentials", default="", help="credentials name in the workers' secrets"
        )
        add_dataset.add_argument(
            "--metadata", type=Path, required=True, help="SmartNoise-SQL YAML metadata"
        )
        add_dataset.add_argument("--format", choices=sorted(DATA_FORMATS))
    datasets.add_parser("remove").add_argument("name")
    datasets.add_parser("list")

    grants = groups.add_parser("grants", help="grant, revoke or list access").add_subparsers(
        dest="action", required=True
    )
    add_grant = grants.add_parser("add")
    add_grant.add_argument("user")
    add_grant.add_argument("dataset")
    _loss_arguments(add_grant, "ledger")
    remove_grant = grants.add_parser("remove")
    remove_grant.add_argument("user")
    remove_grant.add_argument("dataset")
    grants.add_parser("list").add_argument("--user", default="")

    budgets = groups.add_parser("budgets", help="a user's budgets")
    budgets.add_argument("user")
    budgets.add_argument("--delta", default="", help=_DELTA_HELP)
    archive = groups.add_parser("archive", help="archived queries")
    archive.add_argument("--user", default="")
    archive.add_argument("--dataset", default="")

    load = groups.add_parser("load", help="bulk-load Lomas collection files").add_subparsers(
        dest="action", required=True
    )
    load.add_parser("users", help="a Lomas user_collection.yaml").add_argument("file", type=Path)
    load.add_parser("datasets", help="a Lomas dataset_collection.yaml").add_argument(
        "file", type=Path
    )

    ledger = groups.add_parser("ledger", help="budget ledger integrity").add_subparsers(
        dest="action", required=True
    )
    ledger.add_parser(
        "verify", help="recompute every balance and check every hash chain (exit 1 on a problem)"
    )
    show = ledger.add_parser("show", help="one ledger")
    show.add_argument("user")
    show.add_argument("dataset")
    show.add_argument("--delta", default="", help=_DELTA_HELP)
    history = ledger.add_parser("history", help="a ledger's entries, oldest first")
    history.add_argument("user")
    history.add_argument("dataset")
    adjust = ledger.add_parser(
        "adjust", help="set a ledger's allocation (never below what is spent or held)"
    )
    adjust.add_argument("user")
    adjust.add_argument("dataset")
    _loss_arguments(adjust, "ledger")
    adjust.add_argument("--reason", default="", help="recorded in the ledger's history")

    caps = groups.add_parser(
        "caps", help="bound what all users together may spend on a dataset"
    ).add_subparsers(dest="action", required=True)
    set_cap = caps.add_parser("set")
    set_cap.add_argument("dataset")
    _loss_arguments(set_cap, "cap")
    set_cap.add_argument("--reason", default="")
    caps.add_parser("show").add_argument("dataset")
    remove_cap = caps.add_parser("remove")
    remove_cap.add_argument("dataset")
    remove_cap.add_argument("--reason", default="")
    return parser


_DELTA_HELP = "also show what is left of zCDP and pure-DP budgets as (epsilon, delta) at this delta"


def _loss_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--epsilon", help="approximate DP (with --delta) or pure DP (alone with --pure)"
    )
    parser.add_argument("--delta")
    parser.add_argument("--pure", action="store_true", help=f"a pure-DP {what} (epsilon only)")
    parser.add_argument("--rho", help=f"a zCDP {what}")


def _grant_allocation(args: argparse.Namespace) -> Any:
    if args.rho is not None:
        return rho_zcdp(args.rho)
    if args.epsilon is None:
        raise SystemExit("give --epsilon (with --delta or --pure) or --rho")
    if args.pure:
        return pure_dp(args.epsilon)
    if args.delta is None:
        raise SystemExit("give --delta with --epsilon (or --pure for a pure-DP ledger)")
    return approx_dp(args.epsilon, args.delta)


def _run(admin: AdminClient, args: argparse.Namespace) -> int:
    group, action = args.group, getattr(args, "action", None)
    if group == "users":
        if action == "add":
            _print(admin.add_user(args.name, admin=args.admin, may_query=not args.no_query))
        elif action == "remove":
            admin.remove_user(args.name)
        elif action == "freeze":
            _print(admin.freeze_user(args.name, reason=args.reason))
        elif action == "unfreeze":
            _print(admin.unfreeze_user(args.name, reason=args.reason))
        else:
            _print(admin.list_users())
    elif group == "datasets":
        if action in ("add", "update"):
            if args.path:
                source, location = local_source(args.path), args.path
            elif args.url:
                source, location = url_source(args.url), args.url
            else:
                if not args.s3_key:
                    raise SystemExit("--s3-bucket needs --s3-key")
                source = s3_source(
                    args.s3_bucket, args.s3_key, args.s3_endpoint, args.s3_credentials
                )
                location = args.s3_key
            data_format = DATA_FORMATS[args.format] if args.format else format_from_path(location)
            metadata = yaml.safe_load(args.metadata.read_text())
            register = admin.add_dataset if action == "add" else admin.update_dataset
            _print(register(args.name, source, metadata, data_format))
        elif action == "remove":
            admin.remove_dataset(args.name)
        else:
            _print(admin.list_datasets())
    elif group == "grants":
        if action == "add":
            _print(admin.grant(args.user, args.dataset, _grant_allocation(args)))
        elif action == "remove":
            admin.revoke(args.user, args.dataset)
        else:
            _print(admin.list_grants(args.user))
    elif group == "budgets":
        _print(admin.budgets(args.user, delta=args.delta))
    elif group == "archive":
        _print(admin.archive(args.user, args.dataset))
    elif group == "load":
        if action == "users":
            _print({"loaded_users": admin.load_user_collection(args.file)})
        else:
            _print({"loaded_datasets": admin.load_dataset_collection(args.file)})
    elif group == "ledger":
        return _ledger(admin, args)
    elif group == "caps":
        if action == "set":
            _print(admin.set_dataset_cap(args.dataset, _grant_allocation(args), reason=args.reason))
        elif action == "remove":
            _print(admin.set_dataset_cap(args.dataset, None, reason=args.reason))
        else:
            _print(admin.dataset_cap(args.dataset))
    return 0


def _ledger(admin: AdminClient, args: argparse.Namespace) -> int:
    if args.action == "show":
        _print(admin.ledger(args.user, args.dataset, delta=args.delta))
    elif args.action == "history":
        _print(admin.ledger_history(args.user, args.dataset))
    elif args.action == "adjust":
        allocation = _grant_allocation(args)
        _print(admin.adjust_allocation(args.user, args.dataset, allocation, reason=args.reason))
    else:
        report = admin.verify_ledgers()
        _print(report)
        if report.problems:
            print(
                f"lomas-admin: {len(report.problems)} problems in the budget ledgers",
                file=sys.stderr,
            )
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else args.token
    if not token:
        print(
            "lomas-admin: an admin token is required (--token, --token-file or LOMAS_TOKEN)",
            file=sys.stderr,
        )
        return 2
    try:
        with AdminClient(args.target, token=token) as admin:
            return _run(admin, args)
    except LomasError as error:
        print(f"lomas-admin: {error.code} {error.reason}: {error.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
