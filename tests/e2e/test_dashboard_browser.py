"""The web dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by
scripts/setup-browser.sh) driven by Playwright, against the dashboard process (`python -m
lomas_dashboard.main`) in front of the embedded platform.

An administrator signs in with a token, creates a user and a grant; that user runs a real query
through the Python client and the grant's spend moves on the page by exactly the query's cost; the
ledger's history shows the charge and the ledgers verify; a dataset cap is set and removed; refusals (a duplicate user, a researcher
on an admin page, a form without its CSRF token) read as messages, never tracebacks. Screenshots of
every step go to test-output/dashboard/ (git-ignored)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from mesh_testing import RunningMesh
from playwright.sync_api import Browser, Page, expect, sync_playwright

from lomas.client import Client
from lomas.client.admin import local_source
from lomas.common.v1 import dataset_pb2
from lomas_embedded import demo
from lomas_executor.demo import penguin_metadata_text

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"
COUNT = "SELECT COUNT(*) AS n FROM df"


@pytest.fixture
def dashboard(platform: RunningMesh) -> Iterator[str]:
    """The dashboard as its own process on a free port; yields its URL."""
    command = [sys.executable, "-m", "lomas_dashboard.main", "--target", platform.target]
    process = subprocess.Popen(
        [*command, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    banner = process.stdout.readline()  # "Lomas dashboard on http://127.0.0.1:PORT/ (gateway ...)"
    try:
        assert banner.startswith("Lomas dashboard on http://"), banner
        yield banner.split()[3]
    finally:
        process.terminate()
        rest, _ = process.communicate(timeout=20)
    assert process.returncode == 0, rest
    assert "Traceback" not in rest, rest


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


def snap(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url)
    expect(page).to_have_url(f"{url}login")
    page.fill("#token", token)
    page.click("form.stacked button[type=submit]")


def amounts(values: dict[str, Decimal]) -> str:
    """How the page writes an exact privacy loss: `ε 1 · δ 0.00001`."""
    symbols = {"epsilon": "ε", "delta": "δ", "rho": "\N{GREEK SMALL LETTER RHO}"}
    return " · ".join(
        f"{symbols[key]} {format(values[key].normalize(), 'f')}" for key in symbols if key in values
    )


def spent(client: Client) -> dict[str, Decimal]:
    return {k.removeprefix("total_spent_"): v for k, v in client.get_total_spent_budget().items()}


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_admin_and_researcher_in_a_browser(
    platform: RunningMesh, dashboard: str, browser: Browser
) -> None:
    user = f"browser-{uuid.uuid4().hex[:8]}"
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()

    # Sign in as the administrator: the session cookie keeps the token away from scripts and sites.
    sign_in(page, dashboard, platform.token(demo.ADMIN))
    expect(page.locator("header .who")).to_contain_text(f"{demo.ADMIN} (admin)")
    snap(page, "01-admin-signed-in")
    (cookie,) = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # Create a user, then another one of the same name (an admin): the platform's refusal reads
    # as a message. (Creating the very same user again is an idempotent success.)
    page.click("nav >> text=Users")
    page.fill("#create-user input[name=name]", user)
    page.click("#create-user button[type=submit]")
    expect(page.locator(".flash.done")).to_have_text(f"User {user} created.")
    expect(page.locator(f'tr[data-user="{user}"] td.state')).to_have_text("allowed")
    page.fill("#create-user input[name=name]", user)
    page.check("#create-user input[name=admin]")
    page.click("#create-user button[type=submit]")
    expect(page.locator(".flash.refusal")).to_have_text(
        f"Refused by the platform: User '{user}' already exists (ALREADY_EXISTS · USER_EXISTS)"
    )
    expect(page.locator(f'tr[data-user="{user}"] td:nth-child(2)')).to_have_text("researcher")
    snap(page, "02-duplicate-user-refused")

    # Freeze and unfreeze the user.
    page.click(f'tr[data-user="{user}"] button')
    expect(page.locator(f'tr[data-user="{user}"] td.state')).to_have_text("frozen")
    page.click(f'tr[data-user="{user}"] button')
    expect(page.locator(f'tr[data-user="{user}"] td.state')).to_have_text("allowed")

    # Grant the user a budget on PENGUIN.
    page.click("nav >> text=Grants")
    form = page.locator("#create-grant")
    form.locator("input[name=user]").fill(user)
    form.locator("select[name=dataset]").select_option(demo.DATASET)
    form.locator("select[name=definition]").select_option("approx_dp")
    form.locator("input[name=epsilon]").fill("3")
    form.locator("input[name=delta]").fill("0.001")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash.done")).to_have_text(f"{user} may now query {demo.DATASET}.")
    row = page.locator(f'tr[data-grant="{user}/{demo.DATASET}"]')
    expect(row.locator("td.allocated")).to_have_text("ε 3 · δ 0.001")
    expect(row.locator("td.spent")).to_have_text("ε 0 · δ 0")
    expect(row.locator("meter")).to_have_attribute("value", "0.0000")
    snap(page, "03-grant-created")

    # A real query as that user, through the Python client: the spend moves by exactly its cost.
    with Client(platform.target, token=platform.token(user), dataset=demo.DATASET) as client:
        release = client.smartnoise_sql.query(COUNT, epsilon="1", delta="0.00001")
        cost: dict[str, Decimal] = release.attrs["cost"]
        assert cost["epsilon"] > 0
        assert spent(client) == cost
    page.reload()
    expect(row.locator("td.spent")).to_have_text(amounts(cost))
    remaining = {
        "epsilon": Decimal("3") - cost["epsilon"],
        "delta": Decimal("0.001") - cost["delta"],
    }
    expect(row.locator("td.remaining")).to_have_text(amounts(remaining))
    expect(row.locator("meter")).not_to_have_attribute("value", "0.0000")
    snap(page, "04-budget-moved")

    # The ledger's history shows the charge; the ledgers verify.
    row.locator("text=history").click()
    expect(page.locator("h1")).to_have_text(f"Ledger of {user} on {demo.DATASET}")
    kinds = page.locator("#entries td.kind")
    expect(kinds).to_contain_text(["allocation", "reservation", "commit"])
    expect(page.locator("#ledger-summary dd.spent")).to_have_text(amounts(cost))
    snap(page, "05-ledger-history")
    page.click("#verify-ledgers")
    expect(page.locator("#verify-result")).to_contain_text("no problems")
    snap(page, "06-ledgers-verified")

    # The archive, filtered by user, holds the query and its cost.
    page.goto(f"{dashboard}archive?user={user}")
    archived = page.locator("#archive tbody tr")
    expect(archived).to_have_count(1)
    expect(archived.locator("td.cost")).to_have_text(amounts(cost))
    expect(archived).to_contain_text(COUNT)
    snap(page, "07-archive-filtered")

    # Datasets show their metadata as YAML; a dataset's cap is set (a malformed one is refused
    # with the platform's reason), shown, then removed. A dataset of its own keeps PENGUIN uncapped.
    capped = f"CAPPED_{user[-8:].upper()}"
    with platform.admin() as admin:
        admin.add_dataset(
            capped,
            local_source(demo.write_penguin_dataset(platform.data_dir / "datasets")),
            yaml.safe_load(penguin_metadata_text()),
            dataset_pb2.DATA_FORMAT_CSV,
        )
    page.click("nav >> text=Datasets")
    listed = page.locator(f'#datasets tr[data-dataset="{capped}"]')
    listed.locator("summary").click()
    expect(listed.locator("pre.metadata")).to_contain_text("max_ids: 1")
    page.click("nav >> text=Caps")
    cap_form = page.locator("#set-cap")
    cap_form.locator("select[name=dataset]").select_option(capped)
    cap_form.locator("select[name=definition]").select_option("approx_dp")
    cap_form.locator("input[name=epsilon]").fill("five")
    cap_form.locator("input[name=delta]").fill("0.01")
    cap_form.locator("button:text('Set cap')").click()
    expect(page.locator(".flash.refusal")).to_contain_text("(INVALID_ARGUMENT · ")
    cap_form.locator("select[name=dataset]").select_option(capped)
    cap_form.locator("input[name=epsilon]").fill("5")
    cap_form.locator("input[name=delta]").fill("0.01")
    cap_form.locator("input[name=reason]").fill("collusion bound")
    cap_form.locator("button:text('Set cap')").click()
    expect(page.locator(".flash.done")).to_have_text(f"{capped}'s cap is set.")
    cap_row = page.locator(f'#caps tr[data-dataset="{capped}"]')
    expect(cap_row.locator("td.cap")).to_have_text("ε 5 · δ 0.01")
    expect(cap_row).to_contain_text("collusion bound")
    snap(page, "08-dataset-cap")
    cap_form.locator("select[name=dataset]").select_option(capped)
    cap_form.locator("button:text('Remove cap')").click()
    expect(page.locator(".flash.done")).to_have_text(f"{capped} has no cap any more.")
    expect(cap_row.locator("td.cap")).to_have_text("no cap")

    # A form posted without this session's CSRF token is refused.
    forged = page.request.post(f"{dashboard}users", form={"name": f"{user}-forged"})
    assert forged.status == 400 and "Form refused" in forged.text()

    # The researcher signs in: their datasets, budget and query; admin pages are refused readably.
    page.click("#sign-out")
    sign_in(page, dashboard, platform.token(user))
    expect(page).to_have_url(f"{dashboard}me")
    mine = page.locator(f'section[data-dataset="{demo.DATASET}"]')
    expect(mine.locator("dd.spent")).to_have_text(amounts(cost))
    expect(mine.locator("table.queries")).to_contain_text(COUNT)
    expect(page.locator("nav")).not_to_contain_text("Users")
    snap(page, "09-researcher-view")
    response = page.goto(f"{dashboard}users")
    assert response is not None and response.status == 403
    expect(page.locator("h1")).to_have_text("Refused by the platform")
    expect(page.locator(".flash.refusal")).to_contain_text("PERMISSION_DENIED")
    assert "Traceback" not in page.content()
    snap(page, "10-researcher-refused")

    # Nothing the browser did made the admin's forged user.
    with platform.admin() as admin:
        assert f"{user}-forged" not in {u.name for u in admin.list_users()}
    context.close()
