"""The dashboard's web surface without a platform behind it: sign-in, the session cookie, CSRF,
protective headers, and a platform that does not answer shown as a message (the browser test in
tests/e2e drives it against a real one)."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from lomas_dashboard.app import create_app
from lomas_dashboard.gateway import subject_of
from lomas_dashboard.settings import DashboardSettings, parse

# Nothing listens on port 1: every gateway call fails as UNAVAILABLE.
NOWHERE = DashboardSettings(target="127.0.0.1:1", listen_host="127.0.0.1", listen_port=0)


@pytest.fixture
def browser() -> FlaskClient:
    return create_app(NOWHERE).test_client()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


def test_pages_send_an_anonymous_visitor_to_sign_in(browser: FlaskClient) -> None:
    for path in ("/", "/users", "/grants", "/me", "/archive?user=x"):
        response = browser.get(path)
        assert response.status_code == 302 and response.location == "/login", path
    assert browser.get("/healthz").status_code == 200


def test_session_cookie_is_http_only_and_same_site_strict(browser: FlaskClient) -> None:
    page = browser.get("/login")
    cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    secure = create_app(
        DashboardSettings("127.0.0.1:1", "127.0.0.1", 0, secure_cookie=True)
    ).test_client()
    assert "Secure" in secure.get("/login").headers["Set-Cookie"]


def test_pages_forbid_scripts_framing_and_caching(browser: FlaskClient) -> None:
    page = browser.get("/login")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src" not in policy  # scripts fall under default-src 'none'
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert b"<script" not in page.data


def test_a_form_without_the_sessions_csrf_token_is_refused(browser: FlaskClient) -> None:
    browser.get("/login")
    for token in ("", "forged"):
        response = browser.post("/login", data={"token": "a.b.c", "csrf_token": token})
        assert response.status_code == 400
        assert b"Form refused" in response.data


def test_an_unanswering_platform_is_a_readable_refusal(browser: FlaskClient) -> None:
    csrf = csrf_of(browser.get("/login").get_data(as_text=True))
    response = browser.post("/login", data={"token": "Bearer a.b.c", "csrf_token": csrf})
    page = response.get_data(as_text=True)
    assert response.status_code == 503
    assert "The platform refused this token:" in page and "(UNAVAILABLE · UNAVAILABLE)" in page
    assert "Traceback" not in page
    # Not signed in: the pages still send the visitor to sign in.
    assert browser.get("/users").location == "/login"


def test_an_empty_token_is_asked_for_again(browser: FlaskClient) -> None:
    csrf = csrf_of(browser.get("/login").get_data(as_text=True))
    response = browser.post("/login", data={"token": "  ", "csrf_token": csrf})
    assert response.status_code == 400 and b"Paste a token to sign in." in response.data


def test_the_subject_is_read_from_the_token_for_the_greeting_only() -> None:
    # {"sub": "Dr. Antartica"} as a JWT payload (signature checked by the gateway, not here).
    assert subject_of("e30.eyJzdWIiOiAiRHIuIEFudGFydGljYSJ9.c2ln") == "Dr. Antartica"
    assert subject_of("not a token") == ""
    assert subject_of("e30.bm90IGpzb24.c2ln") == ""


def test_settings_come_from_options_then_environment() -> None:
    settings = parse([], {"LOMAS_TARGET": "gw:443", "LOMAS_DASHBOARD_LISTEN": "0.0.0.0:9000"})
    assert (settings.target, settings.listen_host, settings.listen_port) == (
        "gw:443",
        "0.0.0.0",
        9000,
    )
    settings = parse(["--target", "h:1", "--listen", "127.0.0.1:0"], {})
    assert (settings.target, settings.listen_port) == ("h:1", 0)
    with pytest.raises(SystemExit):
        parse(["--listen", "nohost"], {})
