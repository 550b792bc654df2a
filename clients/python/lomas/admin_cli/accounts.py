"""Users, grants, budgets and the query archive."""

from __future__ import annotations

import argparse

import lomas.admin_cli.render as render
from lomas.admin_cli.common import (
    UsageError,
    exists_or_error,
    listing_command,
    loss_from_options,
    naming,
    refusal_text,
    removal_command,
)
from lomas.admin_cli.render import Output, count
from lomas.client.admin import AdminClient
from lomas.client.errors import LomasError
from lomas.common.v1 import archive_pb2


def users_add(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas add_user, and add_user_with_budget with --dataset."""
    allocation = loss_from_options(args) if args.dataset else None
    if allocation is None and any(
        value is not None for value in (args.epsilon, args.delta, args.rho)
    ):
        raise UsageError("a budget needs --dataset (the dataset it is granted on)")
    user = admin.add_user(args.name, admin=args.admin, may_query=not args.no_query)
    text = (
        f"added user {user.name!r} ({render.role(user.role)}, "
        f"{'may query' if user.may_query else 'may not query'})"
    )
    document = {"user": render.data(user)}
    if allocation is not None:
        try:
            grant = admin.grant(user.name, args.dataset, allocation)
        except LomasError as error:
            # The user exists now: say so, then why the grant was refused.
            return Output(text, document, 1, f"the grant was refused: {refusal_text(error)}")
        text += f"\ngranted dataset {grant.dataset!r}: {render.loss(grant.allocation)}"
        document["grant"] = render.data(grant)
    return Output(text, document)


# Lomas del_user and get_list_of_users.
users_remove = removal_command(AdminClient.remove_user, "user", "their grants")
users_list = listing_command(AdminClient.list_users, render.users_table, "user")


def users_show(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas show_user: the user and their budgets."""
    user = admin.get_user(args.name)
    granted = {grant.dataset for grant in admin.list_grants(user.name)}
    ledgers = [ledger for ledger in admin.budgets(user.name) if ledger.dataset in granted]
    about = render.fields(
        [
            ("user", user.name),
            ("role", render.role(user.role)),
            ("may query", render.yes_no(user.may_query)),
            ("created", render.when(user.create_time)),
        ]
    )
    budgets = render.budgets_table(ledgers) if ledgers else "no grants"
    return Output(
        render.join(about, budgets),
        {"user": render.data(user), "budgets": [render.data(ledger) for ledger in ledgers]},
    )


def users_freeze(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas set_may_query False (freeze) or True (unfreeze)."""
    switch = admin.freeze_user if args.action == "freeze" else admin.unfreeze_user
    response = switch(args.name, reason=args.reason)
    state = "may not start queries" if response.user.frozen else "may start queries"
    ledgers = count(len(response.ledgers), "ledger")
    return Output(
        f"{'froze' if args.action == 'freeze' else 'unfroze'} user {args.name!r}: {state} "
        f"(recorded in {ledgers})",
        render.data(response),
    )


def grants_add(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas add_dataset_to_user."""
    grant = admin.grant(args.user, args.dataset, loss_from_options(args))
    return Output(
        f"granted dataset {grant.dataset!r} to user {grant.user!r}: "
        f"{render.definition(grant.definition)} {render.loss(grant.allocation)}",
        render.data(grant),
    )


def grants_remove(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas del_dataset_to_user."""
    naming(
        admin, lambda: admin.revoke(args.user, args.dataset), user=args.user, dataset=args.dataset
    )
    return Output(
        f"revoked the grant of dataset {args.dataset!r} to user {args.user!r} (its ledger keeps "
        "its history)",
        {"user": args.user, "dataset": args.dataset, "removed": True},
    )


def grants_list(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas get_list_of_datasets_from_user (with --user)."""
    exists_or_error(admin, user=args.user)
    grants = admin.list_grants(args.user)
    rows = [
        (
            grant.user,
            grant.dataset,
            render.definition(grant.definition),
            render.loss(grant.allocation),
            render.when(grant.create_time),
        )
        for grant in grants
    ]
    table = render.table(("USER", "DATASET", "DEFINITION", "ALLOCATION", "CREATED"), rows)
    return render.listing(table, grants, "grant")


def budgets(admin: AdminClient, args: argparse.Namespace) -> Output:
    """A user's budgets: initial, spent, reserved and remaining, exactly."""
    ledgers = admin.budgets(args.user, delta=args.delta)
    if args.dataset:
        ledgers = [ledger for ledger in ledgers if ledger.dataset == args.dataset]
    if not ledgers:
        # Ledgers outlive their user, so only an empty answer needs the names checked.
        exists_or_error(admin, user=args.user, dataset=args.dataset)
        text = f"user {args.user!r} has no budget" + (
            f" on dataset {args.dataset!r}" if args.dataset else ""
        )
    else:
        text = render.join(render.budgets_table(ledgers), render.frozen_note(ledgers))
    return Output(text, [render.data(ledger) for ledger in ledgers])


def archive(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Lomas show_archives_of_user (with --user): archived queries, newest first."""
    queries = admin.archive(args.user, args.dataset)
    if not queries:
        # The archive outlives users and datasets, so only an empty answer needs the names checked.
        exists_or_error(admin, user=args.user, dataset=args.dataset)
    rows = [
        (
            render.when(query.submit_time),
            query.user,
            query.dataset,
            archive_status(query.status),
            render.loss(query.cost),
            render.shorten(query_text(query)),
        )
        for query in queries
    ]
    table = render.table(("SUBMITTED", "USER", "DATASET", "STATUS", "COST", "QUERY"), rows)
    return render.listing(table, queries, "archived query", "archived queries")


def archive_status(status: archive_pb2.QueryStatus.ValueType) -> str:
    return {
        archive_pb2.QUERY_STATUS_SUCCEEDED: "succeeded",
        archive_pb2.QUERY_STATUS_FAILED: "failed",
    }.get(status, "unknown")


def query_text(archived: archive_pb2.ArchivedQuery) -> str:
    """The SQL of a SmartNoise-SQL query, or the kind of an OpenDP one."""
    query = archived.query
    if query.WhichOneof("kind") == "smartnoise_sql":
        return query.smartnoise_sql.sql
    if query.WhichOneof("kind") == "opendp":
        polars = query.opendp.WhichOneof("pipeline") == "polars"
        return f"OpenDP {'Polars plan' if polars else 'measurement'}"
    return ""
