"""What the command modules share: usage errors, privacy-loss options, names that must exist, and
the commands that remove or list users and datasets alike."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import TypeVar

from google.protobuf.message import Message

import lomas.admin_cli.render as render
from lomas.admin_cli.render import Output
from lomas.client.admin import AdminClient, approx_dp, pure_dp, rho_zcdp
from lomas.client.errors import LomasError, NotFound
from lomas.common.v1 import privacy_pb2

T = TypeVar("T")
ItemT = TypeVar("ItemT", bound=Message)

# What a command runs: the parsed command line in, what to print out.
Run = Callable[[AdminClient, argparse.Namespace], Output]

DELTA_VIEW_HELP = (
    "also show what is left of zCDP and pure-DP budgets as (epsilon, delta) at this delta"
)


class UsageError(Exception):
    """The command line cannot be run as given (exit code 2, nothing sent to the platform)."""


def add_loss_options(parser: argparse.ArgumentParser, what: str, *, required: bool = True) -> None:
    """--epsilon/--delta (approximate DP), --epsilon --pure (pure DP) or --rho (zCDP)."""
    need = "" if required else " (with --dataset)"
    group = parser.add_argument_group(f"{what}{need}")
    group.add_argument(
        "--epsilon", help=f"epsilon of an approximate-DP {what} (with --delta) or of a pure-DP one"
    )
    group.add_argument("--delta", help=f"delta of an approximate-DP {what}")
    group.add_argument(
        "--pure", action="store_true", help=f"a pure-DP {what}: --epsilon alone, no delta"
    )
    group.add_argument("--rho", help=f"rho of a zCDP {what}")


def loss_from_options(args: argparse.Namespace) -> privacy_pb2.PrivacyLoss:
    """The privacy loss the options give (UsageError when they give none, or two)."""
    if args.rho is not None:
        if args.epsilon is not None or args.delta is not None or args.pure:
            raise UsageError("--rho is a zCDP budget: give it without --epsilon, --delta, --pure")
        return rho_zcdp(decimal_option("--rho", args.rho))
    if args.epsilon is None:
        raise UsageError("give --epsilon with --delta (or with --pure), or --rho")
    epsilon = decimal_option("--epsilon", args.epsilon)
    if args.pure:
        if args.delta is not None:
            raise UsageError("--pure is a pure-DP budget: give --epsilon without --delta")
        return pure_dp(epsilon)
    if args.delta is None:
        raise UsageError("give --delta with --epsilon (or --pure for a pure-DP budget)")
    return approx_dp(epsilon, decimal_option("--delta", args.delta))


def decimal_option(option: str, text: str) -> str:
    """A decimal option, checked here so that a typo is a usage error, kept as typed (exact)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise UsageError(f"{option} takes a decimal number, not {text!r}") from None
    if not value.is_finite():
        raise UsageError(f"{option} takes a finite decimal number, not {text!r}")
    return text


def naming(admin: AdminClient, call: Callable[[], T], *, user: str = "", dataset: str = "") -> T:
    """`call()`, and when the platform says a grant or ledger does not exist, say which name is
    unknown (the user, the dataset) or which pair has no grant."""
    try:
        return call()
    except NotFound as error:
        if error.reason not in ("GRANT_NOT_FOUND", "LEDGER_NOT_FOUND", "NOT_FOUND"):
            raise
        if user:
            admin.get_user(user)
        if dataset:
            admin.get_dataset(dataset)
        raise NotFound(
            error.code,
            error.reason,
            f"user {user!r} holds no grant on dataset {dataset!r} ({error.message})",
            error.metadata,
        ) from None


def exists_or_error(admin: AdminClient, *, user: str = "", dataset: str = "") -> None:
    """NotFound naming `user` or `dataset` when it does not exist."""
    if user:
        admin.get_user(user)
    if dataset:
        admin.get_dataset(dataset)


def refusal_text(error: LomasError) -> str:
    """ "NOT_FOUND USER_NOT_FOUND: user 'x' not found", with the error's metadata if any."""
    details = ", ".join(f"{key}={value}" for key, value in sorted(error.metadata.items()))
    return f"{error.code} {error.reason}: {error.message}" + (f" ({details})" if details else "")


def removal_command(remove: Callable[[AdminClient, str], None], kind: str, with_it: str) -> Run:
    """`KIND remove NAME`: `remove(admin, NAME)`, then say that `with_it` went too (its grants)."""

    def run(admin: AdminClient, args: argparse.Namespace) -> Output:
        remove(admin, args.name)
        return render.removal(kind, args.name, with_it)

    return run


def listing_command(
    items: Callable[[AdminClient], Sequence[ItemT]],
    table: Callable[[Sequence[ItemT]], str],
    noun: str,
) -> Run:
    """`NOUNs list`: every one of `items` in `table`, and how many there are."""

    def run(admin: AdminClient, args: argparse.Namespace) -> Output:
        listed = items(admin)
        return render.listing(table(listed), listed, noun)

    return run
