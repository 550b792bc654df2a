"""The TypeScript client's jobs on a real mesh that starts with no worker: its check script
(clients/typescript/src/jobs-check.ts) submits SmartNoise-SQL queries and an OpenDP measurement,
reads their places in the queue, tries another user's id and cancels one; then the mesh gets a
worker and the script follows the rest to their releases through the async iterator and tries to
cancel too late. The script prints what it saw; the expectations are here, in exact decimals."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import pytest
import yaml
from mesh_testing import RunningMesh, start_mode

from lomas.client.admin import approx_dp
from lomas_embedded import demo
from lomas_executor.demo import penguin_metadata_text
from lomas_testing.opendp_pipelines import mean_bill

dp.enable_features("contrib")  # building the measurement the script submits

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "clients" / "typescript" / "dist" / "jobs-check.js"
ALICE, BOB = "ts-jobs-alice", "ts-jobs-bob"
GRANT = ("10", "0.001")
EPSILON, DELTA = "0.5", "0.00001"
SQLS = [f"SELECT COUNT(*) AS n FROM df WHERE bill_length_mm > {n}" for n in (1, 2, 3)]
NOT_YOURS = {
    "error": "NotFound",
    "code": "NOT_FOUND",
    "reason": "QUERY_NOT_FOUND",
    "message": "no query of yours has this id",
}


@pytest.fixture(scope="module")
def idle_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """An embedded mesh without workers: every real query stays queued until one is started."""
    for mesh in start_mode("embedded", tmp_path_factory.mktemp("ts-jobs"), worker_count=0):
        with mesh.admin() as admin:
            for user in (ALICE, BOB):
                admin.add_user(user)
                admin.grant(user, demo.DATASET, approx_dp(*GRANT))
        yield mesh


def run_phase(phase: str, env: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    env_path = tmp_path / f"{phase}.json"
    env_path.write_text(json.dumps(env))
    done = subprocess.run(
        ["node", str(SCRIPT), phase, str(env_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def loss(values: dict[str, str]) -> tuple[Decimal, Decimal]:
    return Decimal(values["epsilon"]), Decimal(values["delta"])


def budget(values: dict[str, str]) -> dict[str, tuple[Decimal, Decimal]]:
    return {
        "spent": (Decimal(values["total_spent_epsilon"]), Decimal(values["total_spent_delta"])),
        "remaining": (Decimal(values["remaining_epsilon"]), Decimal(values["remaining_delta"])),
    }


def plus(*losses: tuple[Decimal, Decimal]) -> tuple[Decimal, Decimal]:
    return sum((e for e, _ in losses), Decimal(0)), sum((d for _, d in losses), Decimal(0))


def left(spent: tuple[Decimal, Decimal]) -> tuple[Decimal, Decimal]:
    return Decimal(GRANT[0]) - spent[0], Decimal(GRANT[1]) - spent[1]


def test_typescript_jobs_queue_cancel_and_finish(idle_mesh: RunningMesh, tmp_path: Path) -> None:
    columns = list(yaml.safe_load(penguin_metadata_text())["columns"])
    env: dict[str, Any] = {
        "target": idle_mesh.target,
        "dataset": demo.DATASET,
        "token": idle_mesh.token(ALICE),
        "other_token": idle_mesh.token(BOB),
        "sqls": SQLS,
        "epsilon": EPSILON,
        "delta": DELTA,
        "measurement_json": dp.serialize(mean_bill(columns)),
    }
    queued = run_phase("queue", env, tmp_path)
    sql_cost, opendp_cost = loss(queued["costs"]["sql"]), loss(queued["costs"]["opendp"])
    assert sql_cost[0] > 0 and opendp_cost[0] > 0 and opendp_cost[1] == 0  # Laplace: pure DP

    # Queued in submit order, each with its place; the reservations are held, nothing spent.
    assert queued["queued"] == [
        {"state": "queued", "queue_position": place, "described": f"queued ({place - 1} ahead)"}
        for place in (1, 2, 3, 4)
    ]
    reserved = plus(sql_cost, sql_cost, sql_cost, opendp_cost)
    assert budget(queued["budget_queued"]) == {
        "spent": (Decimal(0), Decimal(0)),
        "remaining": left(reserved),
    }

    # Another user's query id is refused exactly like an unknown one, and leaves the query alone.
    assert queued["not_found"] == {
        "others_status": NOT_YOURS,
        "others_cancel": NOT_YOURS,
        "unknown_status": NOT_YOURS,
    }
    assert queued["untouched"] == {"state": "queued", "queue_position": 1}

    # Cancelled before data access: the whole reservation comes back, once; its result refused.
    assert loss(queued["refunded"]) == sql_cost
    assert queued["refunded_again"] == queued["refunded"]
    held = plus(sql_cost, sql_cost, opendp_cost)
    assert budget(queued["budget_cancelled"]) == {
        "spent": (Decimal(0), Decimal(0)),
        "remaining": left(held),
    }
    cancelled = queued["cancelled_result"]
    assert (cancelled["error"], cancelled["code"]) == ("QueryCancelled", "CANCELLED")
    assert cancelled["reason"] == "QUERY_CANCELLED"
    # The cancelled task is no longer ahead of the others.
    assert queued["after_cancel"] == [
        {"state": "queued", "queue_position": 2},
        {"state": "queued", "queue_position": 3},
    ]

    # A worker arrives: the async iterator goes on to running and done, with the release.
    idle_mesh.mesh.start_service("worker-0")
    collected = run_phase("collect", {**env, "ids": queued["ids"]}, tmp_path)
    ids = queued["ids"]
    for followed, query_id, cost, columns_released in zip(
        collected["followed"],
        [ids[0], ids[2], ids[3]],
        [sql_cost, sql_cost, opendp_cost],
        [["n"], ["n"], ["value"]],
        strict=True,
    ):
        states = followed["states"]
        assert states[-1] == "done" and set(states) <= {"queued", "running", "done"}
        release = followed["release"]
        assert release["query_id"] == query_id and release["replay"] is False
        assert loss(release["cost"]) == cost
        assert (release["columns"], release["rows"]) == (columns_released, 1)
    assert collected["result"]["query_id"] == ids[0]
    # The cancelled query never ran: exactly what was held is charged.
    assert budget(collected["budget"]) == {"spent": held, "remaining": left(held)}

    # Too late to cancel once the data was touched; a cancelled query stays cancelled.
    too_late = collected["too_late"]
    assert (too_late["error"], too_late["code"], too_late["reason"]) == (
        "DataAccessed",
        "FAILED_PRECONDITION",
        "DATA_ACCESSED",
    )
    assert collected["cancelled_status"]["error"] == "QueryCancelled"
