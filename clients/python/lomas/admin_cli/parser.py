"""The command line: `lomas-admin [options] NOUN VERB ...`, every command and option with its help."""

from __future__ import annotations

import argparse
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import lomas.admin_cli.accounts as accounts
import lomas.admin_cli.bulk as bulk
import lomas.admin_cli.catalogue as catalogue
import lomas.admin_cli.ledgers as ledgers
from lomas.admin_cli.common import DELTA_VIEW_HELP, Run, add_loss_options
from lomas.client.admin import DATA_FORMATS

DESCRIPTION = """\
Administer a Lomas mesh through its gateway: users, datasets, grants and budgets, the query
archive, and Lomas collection files. Needs an admin token (--token, --token-file or LOMAS_TOKEN).

Output is for people (tables, exact decimals, YAML metadata); --json prints JSON for scripts.
Exit codes: 0 done, 1 refused by the platform (the reason is printed on stderr), 2 usage error."""


def version() -> str:
    try:
        return metadata.version("lomas-client")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lomas-admin",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="print the version"
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("LOMAS_TARGET", "localhost:50051"),
        help="the gateway's host:port (default: LOMAS_TARGET or localhost:50051)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LOMAS_TOKEN", ""),
        help="an admin token (default: LOMAS_TOKEN)",
    )
    parser.add_argument("--token-file", type=Path, help="read the admin token from this file")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    nouns = parser.add_subparsers(dest="noun", required=True, metavar="COMMAND")
    _users(nouns)
    _datasets(nouns)
    _grants(nouns)
    _budgets(nouns)
    _ledger(nouns)
    _caps(nouns)
    _archive(nouns)
    _collections(nouns)
    _load(nouns)
    return parser


# -- helpers ---------------------------------------------------------------------------------------

_Subparsers = Any  # argparse's _SubParsersAction is private


def _common() -> argparse.ArgumentParser:
    """Options every command also takes after its name (`lomas-admin users list --json`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    return common


def _group(nouns: _Subparsers, name: str, help_text: str) -> _Subparsers:
    group = nouns.add_parser(name, help=help_text, description=help_text)
    return group.add_subparsers(dest="action", required=True, metavar="ACTION")


def _command(
    verbs: _Subparsers, name: str, help_text: str, run: Run, *, description: str = ""
) -> argparse.ArgumentParser:
    """A command that runs `run`; its --help says `description` (by default, `help_text`)."""
    command: argparse.ArgumentParser = verbs.add_parser(
        name, help=help_text, description=description or help_text, parents=[_common()]
    )
    command.set_defaults(run=run)
    return command


def _named_command(
    verbs: _Subparsers, name: str, help_text: str, run: Run, what: str
) -> argparse.ArgumentParser:
    """A command on one user or dataset, named by its NAME argument (`what`: "the user's name")."""
    command = _command(verbs, name, help_text, run)
    command.add_argument("name", help=what)
    return command


def _named_commands(verbs: _Subparsers, what: str, *commands: tuple[str, str, Run]) -> None:
    """Commands (name, help, run) on one user or dataset, each named by its NAME argument."""
    for name, help_text, run in commands:
        _named_command(verbs, name, help_text, run, what)


def _grant_command(
    verbs: _Subparsers, name: str, help_text: str, run: Run
) -> argparse.ArgumentParser:
    """A command on one grant and its ledger, named by their USER and DATASET arguments."""
    command = _command(verbs, name, help_text, run)
    _user(command)
    _dataset(command)
    return command


def _users_import(verbs: _Subparsers, name: str, help_text: str) -> None:
    """`users import`, and `load users` the same."""
    command = _command(verbs, name, help_text, bulk.users_import)
    command.add_argument("file", type=Path, help="a Lomas user_collection.yaml")


def _datasets_import(verbs: _Subparsers, name: str, help_text: str) -> None:
    """`datasets import`, and `load datasets` the same."""
    command = _command(verbs, name, help_text, bulk.datasets_import)
    command.add_argument("file", type=Path, help="a Lomas dataset_collection.yaml")
    command.add_argument(
        "--update", action="store_true", help="replace existing datasets that differ from the file"
    )


def _dataset_write(verbs: _Subparsers, name: str, what: str) -> None:
    """`datasets add` and `datasets update`: the same arguments (where the data lives, its metadata
    and format); `what` says what the command does."""
    write = _named_command(
        verbs,
        name,
        f"{what}; the platform first checks that the source can be read and has the metadata's "
        "columns",
        catalogue.datasets_write,
        "the dataset's name, for example PENGUIN",
    )
    where = write.add_argument_group("where the data lives (one of)")
    location = where.add_mutually_exclusive_group(required=True)
    location.add_argument("--path", help="a file on the executors' and workers' file system")
    location.add_argument("--url", help="an HTTP(S) URL")
    location.add_argument("--s3-bucket", help="an S3 bucket (with --s3-key)")
    location.add_argument(
        "--postgres-table",
        metavar="SCHEMA.TABLE",
        help="a PostgreSQL table or view (with --postgres-credentials): SmartNoise-SQL "
        "queries run in the database",
    )
    location.add_argument(
        "--spark-folder",
        metavar="FOLDER",
        help="a folder of Parquet files that the workers' Spark reads (a local folder, or a "
        "URI such as hdfs:// or s3a:// for a Spark cluster)",
    )
    where.add_argument("--s3-key", help="the S3 object's key")
    where.add_argument("--s3-endpoint", default="", help="the S3 endpoint URL (default: AWS)")
    where.add_argument(
        "--s3-credentials",
        default="",
        help="the name of S3 credentials in the platform's secrets (never the keys)",
    )
    where.add_argument(
        "--postgres-credentials",
        default="",
        help="the name of PostgreSQL credentials in the workers' secrets (never the password)",
    )
    write.add_argument(
        "--metadata", type=Path, required=True, help="the SmartNoise-SQL YAML metadata file"
    )
    write.add_argument(
        "--format",
        choices=sorted(DATA_FORMATS),
        help="the data's format (default: from the file's extension; table for "
        "--postgres-table, parquet for --spark-folder)",
    )


def _user(command: argparse.ArgumentParser, help_text: str = "the user's name") -> None:
    command.add_argument("user", help=help_text)


def _dataset(command: argparse.ArgumentParser, help_text: str = "the dataset's name") -> None:
    command.add_argument("dataset", help=help_text)


def _reason(command: argparse.ArgumentParser, where: str) -> None:
    command.add_argument("--reason", default="", help=f"why (recorded in {where})")


def _only(command: argparse.ArgumentParser, noun: str, help_text: str) -> None:
    """--user or --dataset: what a listing shows of one user or dataset only."""
    command.add_argument(f"--{noun}", default="", help=help_text)


def _delta_view(command: argparse.ArgumentParser) -> None:
    command.add_argument("--delta", default="", help=DELTA_VIEW_HELP)


# -- nouns -----------------------------------------------------------------------------------------


def _users(nouns: _Subparsers) -> None:
    verbs = _group(nouns, "users", "add, remove, show, list, freeze or import users")
    add = _command(
        verbs,
        "add",
        "add a user, optionally with a budget on a dataset (Lomas add_user, add_user_with_budget)",
        accounts.users_add,
    )
    add.add_argument("name", help="the user's name: the `sub` of their tokens")
    add.add_argument("--admin", action="store_true", help="give the admin role")
    add.add_argument("--no-query", action="store_true", help="the user may not run queries yet")
    add.add_argument("--dataset", help="also grant this dataset, with the budget below")
    add_loss_options(add, "budget", required=False)
    _named_commands(
        verbs,
        "the user's name",
        ("remove", "remove a user and their grants (Lomas del_user)", accounts.users_remove),
        ("show", "a user and their budgets (Lomas show_user)", accounts.users_show),
    )
    _command(verbs, "list", "list users (Lomas get_list_of_users)", accounts.users_list)
    for verb, what in (
        ("freeze", "stop a user from starting queries (Lomas set_may_query False)"),
        ("unfreeze", "let a frozen user start queries again (Lomas set_may_query True)"),
    ):
        toggle = _named_command(verbs, verb, what, accounts.users_freeze, "the user's name")
        _reason(toggle, "each of the user's ledgers")
    _users_import(
        verbs,
        "import",
        "add users and their budgets from a Lomas user_collection.yaml (Lomas add_users_via_yaml);"
        " existing ones are kept",
    )


def _datasets(nouns: _Subparsers) -> None:
    verbs = _group(nouns, "datasets", "add, update, remove, show, list or import datasets")
    _dataset_write(verbs, "add", "register a dataset (Lomas add_dataset)")
    _dataset_write(
        verbs, "update", "replace a dataset's source, format and metadata (a new version)"
    )
    _named_commands(
        verbs,
        "the dataset's name",
        (
            "remove",
            "remove a dataset and the grants on it (Lomas del_dataset)",
            catalogue.datasets_remove,
        ),
        (
            "show",
            "a dataset: source, format, version, columns (Lomas show_dataset)",
            catalogue.datasets_show,
        ),
        (
            "metadata",
            "a dataset's metadata as YAML (Lomas show_metadata)",
            catalogue.datasets_metadata,
        ),
    )
    _command(verbs, "list", "list datasets (Lomas get_list_of_datasets)", catalogue.datasets_list)
    _datasets_import(
        verbs,
        "import",
        "register datasets from a Lomas dataset_collection.yaml (Lomas add_datasets_via_yaml); "
        "existing ones are kept unless --update",
    )


def _grants(nouns: _Subparsers) -> None:
    verbs = _group(nouns, "grants", "grant, revoke or list access to datasets")
    add = _grant_command(
        verbs,
        "add",
        "grant a user a dataset with a budget (Lomas add_dataset_to_user)",
        accounts.grants_add,
    )
    add_loss_options(add, "budget")
    revoke_help = "revoke a user's grant on a dataset (Lomas del_dataset_to_user)"
    _grant_command(verbs, "remove", revoke_help, accounts.grants_remove)
    listed = _command(
        verbs,
        "list",
        "list grants (Lomas get_list_of_datasets_from_user with --user)",
        accounts.grants_list,
    )
    _only(listed, "user", "only this user's grants")


def _budgets(nouns: _Subparsers) -> None:
    budgets = _command(
        nouns,
        "budgets",
        "a user's budgets: initial, spent, reserved, remaining",
        accounts.budgets,
        description="a user's budgets: initial, spent, reserved and remaining, as exact decimals",
    )
    _user(budgets)
    _only(budgets, "dataset", "only the budget on this dataset")
    _delta_view(budgets)


def _ledger(nouns: _Subparsers) -> None:
    verbs = _group(nouns, "ledger", "budget ledgers: show, history, adjust, verify")
    _command(
        verbs,
        "verify",
        "recompute every balance, check every chain against its checkpoint and reconcile the "
        "ledger with the query archive (exit 1 on a problem)",
        ledgers.verify,
    )
    _delta_view(_grant_command(verbs, "show", "one ledger", ledgers.show))
    _grant_command(verbs, "history", "a ledger's entries, oldest first", ledgers.history)
    adjust = _grant_command(
        verbs,
        "adjust",
        "set a ledger's allocation, never below what is spent or held (Lomas set_budget_field "
        "initial_epsilon/initial_delta: on an approximate-DP ledger --epsilon or --delta alone "
        "keeps the other)",
        ledgers.adjust,
    )
    add_loss_options(adjust, "allocation")
    _reason(adjust, "the ledger's history")


def _caps(nouns: _Subparsers) -> None:
    verbs = _group(nouns, "caps", "bound what all users together may spend on a dataset")
    set_cap = _command(verbs, "set", "set a dataset's cap", catalogue.caps_set)
    _dataset(set_cap)
    add_loss_options(set_cap, "cap")
    _reason(set_cap, "the cap")
    _dataset(_command(verbs, "show", "a dataset's cap and what is used", catalogue.caps_show))
    remove = _command(verbs, "remove", "remove a dataset's cap", catalogue.caps_remove)
    _dataset(remove)
    _reason(remove, "the cap")


def _archive(nouns: _Subparsers) -> None:
    archive = _command(
        nouns,
        "archive",
        "archived queries, newest first (Lomas show_archives_of_user with --user)",
        accounts.archive,
    )
    _only(archive, "user", "only this user's queries")
    _only(archive, "dataset", "only queries on this dataset")


def _collections(nouns: _Subparsers) -> None:
    verbs = _group(
        nouns,
        "collections",
        "the whole platform to and from Lomas collection files (Lomas' collection dump and drop)",
    )
    export = _command(
        verbs,
        "export",
        "write every user with their budgets and every dataset with its metadata and cap as "
        "Lomas-format YAML (user_collection.yaml, dataset_collection.yaml, metadata/)",
        bulk.collections_export,
    )
    export.add_argument("directory", type=Path, help="the folder to write (created if needed)")
    imported = _command(
        verbs,
        "import",
        "import what `collections export` wrote: datasets and caps, then users and budgets",
        bulk.collections_import,
    )
    imported.add_argument("directory", type=Path, help="a folder written by `collections export`")
    imported.add_argument(
        "--update", action="store_true", help="replace existing datasets that differ"
    )
    drop = _command(
        verbs,
        "drop",
        "remove every user except administrators, or every dataset (Lomas drop_collection; "
        "ledgers and the archive keep their history)",
        bulk.collections_drop,
    )
    drop.add_argument("collection", choices=("users", "datasets"), help="what to remove")
    drop.add_argument("--yes", action="store_true", help="confirm: nothing is removed without it")


def _load(nouns: _Subparsers) -> None:
    verbs = _group(
        nouns, "load", "bulk-load Lomas collection files (the same as `users/datasets import`)"
    )
    _users_import(verbs, "users", "the same as `users import`: a Lomas user_collection.yaml")
    _datasets_import(
        verbs, "datasets", "the same as `datasets import`: a Lomas dataset_collection.yaml"
    )
