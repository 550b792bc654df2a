"""`lomas-admin ledger verify` against a mesh whose budget ledger this suite wrote through the real
clients (queries, grants, adjustments, freezes, a dataset cap), then against the same database
tampered with by direct SQL: exit 0, then exit 1 with the problem reported. In both deployment
modes (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lomas import admin_cli
from lomas.client import AccessDenied, Client
from lomas.client.admin import AdminClient, approx_dp
from lomas.client.errors import BudgetExhausted
from lomas_embedded import demo
from lomas_embedded.local import LocalMesh, mode_mesh
from lomas_embedded.mesh import Mesh

COUNT = "SELECT COUNT(*) AS n FROM df"


@dataclass
class LedgerMesh:
    running: LocalMesh
    token_file: Path

    @property
    def mesh(self) -> Mesh:
        return self.running.mesh

    @property
    def budget_url(self) -> str:
        return self.running.budget_database_url

    def admin(self) -> AdminClient:
        return self.running.admin()

    def client(self, subject: str) -> Client:
        return self.running.client(subject)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real `lomas-admin` command, as an administrator runs it."""
        command = [sys.executable, "-m", "lomas.admin_cli", "--target", self.running.target]
        command += ["--token-file", str(self.token_file), "--json", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module", params=["embedded", "mesh"])
def ledger_mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LedgerMesh]:
    """A mesh of its own (this module tampers with its database)."""
    tmp = tmp_path_factory.mktemp(f"ledger-{request.param}")
    with mode_mesh(request.param, tmp) as running:
        token_file = tmp / "admin.token"
        token_file.write_text(running.token(demo.ADMIN))
        yield LedgerMesh(running, token_file)


def write_ledgers(platform: LedgerMesh) -> str:
    """Exercise every kind of ledger entry through the real clients; returns the researcher."""
    name = f"researcher-{uuid.uuid4().hex[:8]}"
    with platform.admin() as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp("3", "0.001"))
        admin.add_user(f"{name}-z")
        admin.grant(f"{name}-z", demo.DATASET, approx_dp("1", "0.001"))
    # Distinct queries: the gateway answers a repeated query with its earlier release, for free.
    with platform.client(name) as client:
        for epsilon in (1.0, 0.9):
            client.smartnoise_sql.query(COUNT, epsilon=epsilon, delta=0)  # reserve, access, commit
        with pytest.raises(BudgetExhausted):
            client.smartnoise_sql.query(COUNT, epsilon=10.0, delta=0)
    with platform.admin() as admin:
        raised = admin.adjust_allocation(
            name, demo.DATASET, approx_dp("5", "0.001"), reason="more work approved"
        )
        assert raised.allocation == approx_dp("5", "0.001")
        admin.freeze_user(name, reason="review")
    with platform.client(name) as client, pytest.raises(AccessDenied) as frozen:
        client.smartnoise_sql.query(COUNT, epsilon=0.8, delta=0)
    assert frozen.value.reason == "USER_MAY_NOT_QUERY"
    with platform.admin() as admin:
        admin.unfreeze_user(name, reason="review done")
        cap = admin.set_dataset_cap(demo.DATASET, approx_dp("100", "0.1"), reason="collusion")
        assert cap.used.approx_dp.epsilon  # counted what the researchers already spent
    with platform.client(name) as client:
        client.smartnoise_sql.query(COUNT, epsilon=0.7, delta=0)
    return name


def run_verify(platform: LedgerMesh) -> tuple[int, dict[str, Any], str]:
    """The exit code, the JSON report (as `json` gives it) and the stderr of `ledger verify`."""
    result = platform.cli("ledger", "verify")
    return result.returncode, json.loads(result.stdout or "{}"), result.stderr


def tamper_with_a_commit(platform: LedgerMesh, user: str) -> None:
    """Lower the epsilon of a committed charge, as someone with database rights could, after
    getting the append-only triggers out of the way."""
    sql = (
        "UPDATE ledger_entries SET epsilon = '0.1' WHERE kind = 'commit' AND ledger_id = "
        "(SELECT id FROM ledgers WHERE user_name = '{user}')"
    ).format(user=user.replace("'", "''"))
    if platform.budget_url.startswith("sqlite:///"):
        connection = sqlite3.connect(platform.budget_url.removeprefix("sqlite:///"))
        try:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                connection.execute(sql)
            connection.execute("DROP TRIGGER ledger_entries_no_update")
            assert connection.execute(sql).rowcount == 3
            connection.commit()
        finally:
            connection.close()
        return
    with psycopg.connect(platform.budget_url, autocommit=True) as postgres:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            postgres.execute(sql)
        with postgres.transaction():
            postgres.execute("SET LOCAL session_replication_role = replica")
            assert postgres.execute(sql).rowcount == 3


def test_ledger_verify_passes_on_the_suites_ledgers_and_catches_tampering(
    ledger_mesh: LedgerMesh,
) -> None:
    user = write_ledgers(ledger_mesh)

    code, report, _ = run_verify(ledger_mesh)
    assert code == 0, report
    assert report.get("problems", []) == []
    assert int(report["ledgers_checked"]) >= 3
    assert int(report["entries_checked"]) >= 15

    history = ledger_mesh.cli("ledger", "history", user, demo.DATASET)
    assert history.returncode == 0, history.stderr
    kinds = [entry["kind"] for entry in json.loads(history.stdout)]
    for kind in ("ALLOCATION", "RESERVATION", "ACCESS", "COMMIT", "ADJUSTMENT", "FREEZE"):
        assert f"LEDGER_ENTRY_KIND_{kind}" in kinds
    assert kinds.count("LEDGER_ENTRY_KIND_COMMIT") == 3

    with ledger_mesh.admin() as admin:
        spent = admin.ledger(user, demo.DATASET).spent.approx_dp.epsilon
    tamper_with_a_commit(ledger_mesh, user)
    code, report, stderr = run_verify(ledger_mesh)
    assert code == 1
    problems = [str(p) for p in report["problems"]]
    assert any("hash mismatch (entry altered)" in p for p in problems), problems
    expected = f"cached spent epsilon {spent} but entries give 0.3"
    assert any(expected in p for p in problems), problems
    assert "problems in the budget ledgers" in stderr


def test_admin_cli_ledger_commands(
    ledger_mesh: LedgerMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other ledger commands, through the CLI's `main` (in process, to keep the suite fast)."""

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = ["--target", ledger_mesh.mesh.gateway_target, "--json", "--token-file"]
        code = admin_cli.main([*argv, str(ledger_mesh.token_file), *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    name = f"cli-{uuid.uuid4().hex[:8]}"
    assert cli("users", "add", name).returncode == 0
    capped = cli("caps", "set", demo.DATASET, "--epsilon", "100", "--delta", "0.1")
    assert json.loads(capped.stdout)["cap"] == {"approx_dp": {"epsilon": "100", "delta": "0.1"}}
    refused = cli("grants", "add", name, demo.DATASET, "--rho", "0.5")
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION DATASET_CAP_DEFINITION_MISMATCH" in refused.stderr
    assert cli("caps", "remove", demo.DATASET, "--reason", "zCDP grants").returncode == 0
    assert "cap" not in json.loads(cli("caps", "show", demo.DATASET).stdout)
    granted = cli("grants", "add", name, demo.DATASET, "--rho", "0.5")
    assert granted.returncode == 0, granted.stderr
    shown = cli("ledger", "show", name, demo.DATASET, "--delta", "0.00001")
    view = json.loads(shown.stdout)["remaining_at_delta"]
    assert view == {"epsilon": "5.298525912188081207", "delta": "0.00001"}
    adjusted = cli("ledger", "adjust", name, demo.DATASET, "--rho", "0.25", "--reason", "halved")
    assert json.loads(adjusted.stdout)["allocation"] == {"rho_zcdp": {"rho": "0.25"}}
    frozen = cli("users", "freeze", name, "--reason", "on leave")
    assert json.loads(frozen.stdout)["user"]["frozen"] is True
    budgets = json.loads(cli("budgets", name, "--delta", "1e-6").stdout)
    assert budgets[0]["frozen"] is True and "remaining_at_delta" in budgets[0]
    missing = cli("users", "freeze", "nobody-at-all")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    researcher = AdminClient(ledger_mesh.mesh.gateway_target, token=ledger_mesh.running.token(name))
    with researcher, pytest.raises(AccessDenied) as not_admin:
        researcher.freeze_user(demo.RESEARCHER)
    assert not_admin.value.reason == "ADMIN_ROLE_REQUIRED"
