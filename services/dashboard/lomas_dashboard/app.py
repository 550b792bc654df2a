"""The dashboard's web application: sign-in with a token, the pages, and how refusals are shown.

A refusal by the platform (a typed `LomasError`) is shown on the page as its message, gRPC code and
reason; anything unexpected is a generic error page, with the traceback in the log only.
"""

from __future__ import annotations

import logging

from flask import Flask, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, InternalServerError

from lomas.client import LomasError, Unauthenticated
from lomas_dashboard import admin_views, researcher_views
from lomas_dashboard.gateway import ADMIN, Gateway, subject_of
from lomas_dashboard.refusals import http_status, refusal_text
from lomas_dashboard.security import CsrfRefused, configure
from lomas_dashboard.settings import DashboardSettings

log = logging.getLogger(__name__)

# Pages anyone may open without signing in.
PUBLIC_ENDPOINTS = frozenset({"login", "static", "healthz"})


def create_app(settings: DashboardSettings) -> Flask:
    app = Flask(__name__)
    configure(app, secure_cookie=settings.secure_cookie)
    gateway = Gateway(settings.target)
    app.jinja_env.globals["gateway_target"] = settings.target

    @app.before_request
    def require_sign_in() -> ResponseReturnValue | None:
        if request.endpoint in PUBLIC_ENDPOINTS or isinstance(session.get("token"), str):
            return None
        return redirect(url_for("login"))

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return "ok\n", 200, {"Content-Type": "text/plain"}

    @app.get("/")
    def home() -> ResponseReturnValue:
        return redirect(url_for("grants" if session.get("role") == ADMIN else "my_view"))

    @app.route("/login", methods=["GET", "POST"])
    def login() -> ResponseReturnValue:
        if request.method == "GET":
            return render_template("login.html")
        token = request.form.get("token", "").strip().removeprefix("Bearer ").strip()
        if not token:
            flash("Paste a token to sign in.", "refusal")
            return render_template("login.html"), 400
        try:
            role = gateway.role_of(token)
        except LomasError as error:
            flash(f"The platform refused this token: {refusal_text(error)}", "refusal")
            return render_template("login.html"), http_status(error)
        session.clear()  # a new session for a new user: nothing carries over, not even the CSRF token
        session.update(token=token, role=role, subject=subject_of(token))
        return redirect(url_for("home"))

    @app.post("/logout")
    def logout() -> ResponseReturnValue:
        session.clear()
        flash("Signed out.", "done")
        return redirect(url_for("login"))

    admin_views.register(app, gateway)
    researcher_views.register(app, gateway)

    @app.errorhandler(LomasError)
    def refused(error: LomasError) -> ResponseReturnValue:
        if isinstance(error, Unauthenticated):
            # An expired or revoked token: sign out and say why.
            session.clear()
            flash(f"Sign in again: {refusal_text(error)}", "refusal")
            return redirect(url_for("login"))
        page = render_template("refused.html", error=error, text=refusal_text(error))
        return page, http_status(error)

    @app.errorhandler(CsrfRefused)
    def csrf_refused(error: CsrfRefused) -> ResponseReturnValue:
        message = (
            "This form has expired or did not come from this dashboard. "
            "Reload the page and try again."
        )
        return render_template("problem.html", title="Form refused", message=message), 400

    @app.errorhandler(HTTPException)
    def http_problem(error: HTTPException) -> ResponseReturnValue:
        if isinstance(error, InternalServerError):
            return unexpected(error)
        page = render_template(
            "problem.html", title=f"{error.code} {error.name}", message=error.description
        )
        return page, error.code or 500

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> ResponseReturnValue:
        original = getattr(error, "original_exception", None) or error
        log.error("unexpected error on %s %s", request.method, request.path, exc_info=original)
        message = "The dashboard failed to show this page. The details are in its log."
        return render_template("problem.html", title="Something went wrong", message=message), 500

    return app
