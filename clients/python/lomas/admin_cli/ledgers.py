"""The budget ledgers: one ledger, its history, its allocation, and the integrity check."""

from __future__ import annotations

import argparse

import lomas.admin_cli.render as render
from lomas.admin_cli.common import UsageError, decimal_option, loss_from_options, naming
from lomas.admin_cli.render import Output, count
from lomas.budget.v1 import budget_pb2
from lomas.client.admin import AdminClient, approx_dp
from lomas.client.admin_values import loss_components
from lomas.common.v1 import privacy_pb2


def verify(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Recompute every balance, check every hash chain against its checkpoint, and reconcile the
    ledger with the query archive; exit 1 on a problem."""
    report = admin.verify_ledgers()
    checked = (
        f"checked {count(report.ledgers_checked, 'ledger')} and "
        f"{count(report.entries_checked, 'entry', 'entries')}"
    )
    if not report.problems:
        return Output(f"{checked}: no problems", render.data(report))
    problems = count(len(report.problems), "problem")
    listing = "\n".join(f"- {problem}" for problem in report.problems)
    return Output(
        f"{checked}: {problems}\n{listing}",
        render.data(report),
        code=1,
        problem=f"{problems} in the budget ledgers or their reconciliation with the archive",
    )


def show(admin: AdminClient, args: argparse.Namespace) -> Output:
    ledger = naming(
        admin,
        lambda: admin.ledger(args.user, args.dataset, delta=args.delta),
        user=args.user,
        dataset=args.dataset,
    )
    return Output(_ledger_text(ledger), render.data(ledger))


def _ledger_text(ledger: budget_pb2.Ledger) -> str:
    about = render.fields(
        [
            ("frozen", render.yes_no(ledger.frozen)),
            ("capped dataset", render.yes_no(ledger.capped)),
            ("entries", str(ledger.entry_count)),
            ("head hash", ledger.head_hash),
            ("opened", render.when(ledger.create_time)),
        ]
    )
    return render.join(render.budgets_table([ledger], with_user=True), about)


def history(admin: AdminClient, args: argparse.Namespace) -> Output:
    entries = naming(
        admin,
        lambda: admin.ledger_history(args.user, args.dataset),
        user=args.user,
        dataset=args.dataset,
    )
    rows = [
        (
            str(entry.seq),
            render.when(entry.create_time),
            budget_pb2.LedgerEntryKind.Name(entry.kind).removeprefix("LEDGER_ENTRY_KIND_").lower(),
            render.loss(entry.amount),
            entry.actor,
            entry.query_id,
            entry.reason,
        )
        for entry in entries
    ]
    table = render.table(("SEQ", "TIME", "KIND", "AMOUNT", "ACTOR", "QUERY", "REASON"), rows)
    return render.listing(table, entries, "entry", "entries")


def adjust(admin: AdminClient, args: argparse.Namespace) -> Output:
    """Set a ledger's allocation (Lomas set_budget_field initial_epsilon / initial_delta: on an
    approximate-DP ledger, --epsilon or --delta alone keeps the other)."""
    current = naming(
        admin, lambda: admin.ledger(args.user, args.dataset), user=args.user, dataset=args.dataset
    )
    allocation = _new_allocation(args, current)
    ledger = admin.adjust_allocation(args.user, args.dataset, allocation, reason=args.reason)
    return Output(
        render.join(
            f"set the allocation of user {args.user!r} on dataset {args.dataset!r} to "
            f"{render.loss(ledger.allocation)}",
            render.budgets_table([ledger]),
        ),
        render.data(ledger),
    )


def _new_allocation(
    args: argparse.Namespace, current: budget_pb2.Ledger
) -> privacy_pb2.PrivacyLoss:
    approximate = current.allocation.WhichOneof("loss") == "approx_dp"
    one_side = (args.epsilon is None) != (args.delta is None)
    if approximate and one_side and args.rho is None and not args.pure:
        kept = loss_components(current.allocation)
        epsilon = (
            decimal_option("--epsilon", args.epsilon)
            if args.epsilon is not None
            else format(kept["epsilon"], "f")
        )
        delta = (
            decimal_option("--delta", args.delta)
            if args.delta is not None
            else format(kept["delta"], "f")
        )
        return approx_dp(epsilon, delta)
    if args.epsilon is None and args.delta is None and args.rho is None:
        raise UsageError("give the new allocation: --epsilon and/or --delta, or --rho")
    return loss_from_options(args)
