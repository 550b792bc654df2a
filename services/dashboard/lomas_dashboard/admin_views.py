"""The administrator's pages: users, datasets, grants and their ledgers, dataset caps, the archive.

Each page is a few AdminService calls with the signed-in token, so the gateway checks the admin
role on every one of them: a researcher who opens these pages sees the platform's refusal. Forms
that change something post, then redirect back to their page with what happened (done or refused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from flask import Flask, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from lomas.budget.v1 import budget_pb2
from lomas.client import LomasError, Unauthenticated
from lomas.client.admin import AdminClient, approx_dp, pure_dp, rho_zcdp
from lomas.common.v1 import privacy_pb2
from lomas_dashboard.gateway import Gateway
from lomas_dashboard.refusals import FormError, refusal_text
from lomas_dashboard.rows import ArchiveRow, CapRow, DatasetRow, EntryRow, GrantRow, UserRow
from lomas_dashboard.security import signed_in_token as token

# The privacy definitions a form can choose, with the fields each one reads.
DEFINITION_FIELDS = {
    "approx_dp": ("epsilon", "delta"),
    "pure_dp": ("epsilon",),
    "rho_zcdp": ("rho",),
}


def loss_from_form(form: Mapping[str, str]) -> privacy_pb2.PrivacyLoss:
    """The privacy loss a form describes. Amounts go to the platform as typed (exact decimal
    text): the platform, not the page, decides whether they are valid."""
    definition = form.get("definition", "")
    if definition not in DEFINITION_FIELDS:
        raise FormError(
            "Choose a privacy definition: (ε, δ)-DP, ε-DP or \N{GREEK SMALL LETTER RHO}-zCDP."
        )
    values = {name: form.get(name, "").strip() for name in DEFINITION_FIELDS[definition]}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise FormError(f"Fill in {' and '.join(missing)} for this privacy definition.")
    if definition == "approx_dp":
        return approx_dp(values["epsilon"], values["delta"])
    if definition == "pure_dp":
        return pure_dp(values["epsilon"])
    return rho_zcdp(values["rho"])


def required(form: Mapping[str, str], name: str, label: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise FormError(f"Fill in the {label}.")
    return value


def perform(action: Callable[[], object], done: str, back: str) -> ResponseReturnValue:
    """Run one change, then go back to its page with what happened: `done`, or the refusal."""
    try:
        action()
    except Unauthenticated:
        raise  # the app signs the user out
    except LomasError as error:
        flash(f"Refused by the platform: {refusal_text(error)}", "refusal")
    except FormError as error:
        flash(str(error), "refusal")
    else:
        flash(done, "done")
    return redirect(back)


class NamedRow(Protocol):
    """A row of a table of named resources (`UserRow`, `DatasetRow`)."""

    @property
    def name(self) -> str: ...


def register(app: Flask, gateway: Gateway) -> None:
    def page_by_name(
        template: str, listed: str, read: Callable[[AdminClient], Iterable[NamedRow]]
    ) -> ResponseReturnValue:
        """A page that lists one kind of resource, sorted by name (`listed` in its template)."""
        with gateway.admin(token()) as admin:
            rows = sorted(read(admin), key=lambda row: row.name)
        return render_template(template, **{listed: rows})

    @app.get("/users")
    def users() -> ResponseReturnValue:
        return page_by_name(
            "users.html", "users", lambda admin: map(UserRow.of, admin.list_users())
        )

    @app.post("/users")
    def create_user() -> ResponseReturnValue:
        form = request.form

        def create() -> None:
            name = required(form, "name", "user's name")
            with gateway.admin(token()) as admin:
                admin.add_user(name, admin="admin" in form, may_query="may_query" in form)

        name = form.get("name", "").strip()
        return perform(create, f"User {name} created.", url_for("users"))

    def switch(freeze: bool) -> ResponseReturnValue:
        form = request.form

        def change() -> None:
            name = required(form, "name", "user's name")
            reason = form.get("reason", "").strip()
            with gateway.admin(token()) as admin:
                if freeze:
                    admin.freeze_user(name, reason=reason)
                else:
                    admin.unfreeze_user(name, reason=reason)

        name = form.get("name", "").strip()
        done = (
            f"{name} is frozen: no new queries."
            if freeze
            else f"{name} is unfrozen: may query again."
        )
        return perform(change, done, url_for("users"))

    @app.post("/users/freeze")
    def freeze_user() -> ResponseReturnValue:
        return switch(freeze=True)

    @app.post("/users/unfreeze")
    def unfreeze_user() -> ResponseReturnValue:
        return switch(freeze=False)

    @app.get("/datasets")
    def datasets() -> ResponseReturnValue:
        return page_by_name(
            "datasets.html", "datasets", lambda admin: map(DatasetRow.of, admin.list_datasets())
        )

    @app.get("/grants")
    def grants() -> ResponseReturnValue:
        user_filter = request.args.get("user", "").strip()
        with gateway.admin(token()) as admin:
            granted = admin.list_grants(user_filter)
            # One ListLedgers call per user gives every ledger of theirs.
            ledgers: dict[tuple[str, str], budget_pb2.Ledger] = {}
            for user in sorted({grant.user for grant in granted}):
                for ledger in admin.budgets(user):
                    ledgers[(ledger.user, ledger.dataset)] = ledger
            user_names = sorted(user.name for user in admin.list_users())
            dataset_names = sorted(dataset.name for dataset in admin.list_datasets())
        rows = [GrantRow.of(grant, ledgers.get((grant.user, grant.dataset))) for grant in granted]
        return render_template(
            "grants.html",
            grants=sorted(rows, key=lambda row: (row.user, row.dataset)),
            user_filter=user_filter,
            user_names=user_names,
            dataset_names=dataset_names,
        )

    @app.post("/grants")
    def create_grant() -> ResponseReturnValue:
        form = request.form

        def create() -> None:
            user = required(form, "user", "user's name")
            dataset = required(form, "dataset", "dataset")
            allocation = loss_from_form(form)
            with gateway.admin(token()) as admin:
                admin.grant(user, dataset, allocation)

        user, dataset = form.get("user", "").strip(), form.get("dataset", "").strip()
        return perform(create, f"{user} may now query {dataset}.", url_for("grants"))

    @app.get("/ledger")
    def ledger() -> ResponseReturnValue:
        user, dataset = request.args.get("user", ""), request.args.get("dataset", "")
        if not user or not dataset:
            flash("Choose a grant to see its ledger.", "refusal")
            return redirect(url_for("grants"))
        with gateway.admin(token()) as admin:
            summary = admin.ledger(user, dataset)
            entries = [EntryRow.of(entry) for entry in admin.ledger_history(user, dataset)]
        return render_template(
            "ledger.html",
            user=user,
            dataset=dataset,
            grant=GrantRow.of_ledger(summary),
            head_hash=summary.head_hash,
            entries=entries,
        )

    @app.post("/verify")
    def verify() -> ResponseReturnValue:
        with gateway.admin(token()) as admin:
            result = admin.verify_ledgers()
        return render_template(
            "verify.html",
            ledgers=result.ledgers_checked,
            entries=result.entries_checked,
            problems=list(result.problems),
        )

    @app.get("/caps")
    def caps() -> ResponseReturnValue:
        with gateway.admin(token()) as admin:
            names = sorted(dataset.name for dataset in admin.list_datasets())
            rows = [CapRow.of(name, admin.dataset_cap(name)) for name in names]
        return render_template("caps.html", caps=rows)

    @app.post("/caps")
    def set_cap() -> ResponseReturnValue:
        form = request.form
        removing = "remove" in form

        def change() -> None:
            dataset = required(form, "dataset", "dataset")
            cap = None if removing else loss_from_form(form)
            with gateway.admin(token()) as admin:
                admin.set_dataset_cap(dataset, cap, reason=form.get("reason", "").strip())

        dataset = form.get("dataset", "").strip()
        done = f"{dataset} has no cap any more." if removing else f"{dataset}'s cap is set."
        return perform(change, done, url_for("caps"))

    @app.get("/archive")
    def archive() -> ResponseReturnValue:
        user, dataset = (
            request.args.get("user", "").strip(),
            request.args.get("dataset", "").strip(),
        )
        with gateway.admin(token()) as admin:
            queries = admin.archive(user, dataset)
        newest_first = sorted(queries, key=lambda q: q.submit_time.ToNanoseconds(), reverse=True)
        return render_template(
            "archive.html",
            queries=[ArchiveRow.of(query) for query in newest_first],
            user=user,
            dataset=dataset,
        )
