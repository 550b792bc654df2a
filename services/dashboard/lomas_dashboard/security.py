"""What keeps a signed-in token safe in the browser: the session cookie's settings, a CSRF token on
every form that changes something, and response headers that forbid framing, inline scripts and
caching of pages that show budgets.

The session cookie is signed with a random key made when the process starts (a restart signs
everyone out), is HttpOnly (no script reads the token) and SameSite=Strict (no other site's page
sends it along).
"""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, Response, request, session

CSRF_FIELD = "csrf_token"

# Pages need no script at all and only their own stylesheet.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


class CsrfRefused(Exception):
    """A form came without this session's CSRF token (an old page, or another site's form)."""


def configure(app: Flask, *, secure_cookie: bool) -> None:
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),
        SESSION_COOKIE_NAME="lomas_dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure_cookie,
        # Forms are small; a bigger body is refused before it is read.
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    app.before_request(_check_csrf)
    app.after_request(_protective_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["CSRF_FIELD"] = CSRF_FIELD


def csrf_token() -> str:
    """This session's CSRF token (made on first use), for the hidden field of every form."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def signed_in_token() -> str:
    """The bearer token the user signed in with (every page but sign-in requires one)."""
    token = session.get("token")
    if not isinstance(token, str):
        raise RuntimeError("no signed-in token: the page should have sent its user to sign in")
    return token


def _check_csrf() -> None:
    if request.method != "POST":
        return
    sent = request.form.get(CSRF_FIELD, "")
    expected = session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        raise CsrfRefused()


def _protective_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response
