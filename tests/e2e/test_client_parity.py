"""Every client plays the same researcher scenario (clients/SCENARIO.md) against the live embedded
platform, each as its own fresh user with the same grant; their observations must be equal, and
equal to what the platform is known to answer. Parity across languages is checked, not assumed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from mesh_testing import RunningMesh

from lomas.client import AlreadyExists
from lomas.client.admin import approx_dp, local_source
from lomas.common.v1 import dataset_pb2
from lomas_embedded import demo
from lomas_embedded.devkeys import DevIssuer
from lomas_executor.demo import penguin_metadata_text

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = "PENGUIN_RESTRICTED"
GRANT = ("10", "0.005")

# How each client's runner is started; each prints its observation as JSON.
RUNNERS: dict[str, list[str]] = {
    "python": [sys.executable, "-m", "lomas.client.scenario"],
    "typescript": ["node", "clients/typescript/dist/scenario.js"],
    "go": ["clients/go/bin/lomas-scenario"],
}

# What the platform answers the scenario, whichever client asks.
EXPECTED_REFUSALS = {
    # A researcher cannot tell a dataset that does not exist from one they may not see.
    "unknown_dataset": {"code": "PERMISSION_DENIED", "reason": "DATASET_ACCESS_DENIED"},
    "no_access": {"code": "PERMISSION_DENIED", "reason": "DATASET_ACCESS_DENIED"},
    "budget_exhausted": {"code": "RESOURCE_EXHAUSTED", "reason": "PRIVACY_BUDGET_EXHAUSTED"},
    "invalid_sql": {"code": "INVALID_ARGUMENT", "reason": "QUERY_INVALID"},
    "invalid_token": {"code": "UNAUTHENTICATED", "reason": "TOKEN_INVALID"},
}


@pytest.fixture(scope="module")
def scenario_platform(platform: RunningMesh) -> Iterator[RunningMesh]:
    """The platform with a second dataset nobody is granted, for the no-access refusal."""
    admin = platform.admin()
    csv_path = demo.write_penguin_dataset(platform.data_dir / "datasets")
    try:
        admin.add_dataset(
            FORBIDDEN,
            local_source(csv_path),
            yaml.safe_load(penguin_metadata_text()),
            dataset_pb2.DATA_FORMAT_CSV,
        )
    except AlreadyExists:
        pass
    yield platform


def environment(platform: RunningMesh, user: str, tmp_path: Path) -> Path:
    """A fresh user with the standard grant, and the environment file its runner reads."""
    admin = platform.admin()
    admin.add_user(user)
    admin.grant(user, demo.DATASET, approx_dp(*GRANT))
    stranger = DevIssuer.load_or_create(tmp_path / "untrusted-issuer")
    env = {
        "target": platform.target,
        "token": platform.token(user),
        "invalid_token": stranger.token(user),
        "dataset": demo.DATASET,
        "unknown_dataset": "NO_SUCH_DATASET",
        "forbidden_dataset": FORBIDDEN,
        "sql": "SELECT COUNT(*) AS n FROM df",
        "epsilon": "0.5",
        "delta": "0.00001",
        "exhausting_epsilon": "1000",
        "invalid_sql": "SELECT no_such_column FROM df",
        "dummy_rows": 10,
        "dummy_seed": 7,
    }
    path = tmp_path / "env.json"
    path.write_text(json.dumps(env))
    return path


def run_scenario(command: list[str], env_path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [*command, str(env_path)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    observation: dict[str, Any] = json.loads(done.stdout)
    return observation


def exact(loss: dict[str, str]) -> tuple[Decimal, Decimal]:
    return Decimal(loss["epsilon"]), Decimal(loss["delta"])


def check_observation(seen: dict[str, Any]) -> None:
    """What every client must see, whatever its language."""
    assert demo.DATASET in seen["datasets"] and FORBIDDEN not in seen["datasets"]
    assert seen["metadata"]["max_ids"] == 1
    assert "species" in seen["metadata"]["columns"]
    assert seen["dummy"]["rows"] == 10
    assert sorted(seen["dummy"]["columns"]) == seen["metadata"]["columns"]
    cost = exact(seen["cost"])
    assert cost[0] > 0
    before, after = seen["budget_before"], seen["budget_after"]
    assert exact(before["initial"]) == (Decimal(GRANT[0]), Decimal(GRANT[1]))
    assert exact(before["spent"]) == (Decimal(0), Decimal(0))
    assert exact(before["remaining"]) == exact(before["initial"])
    assert seen["query"]["columns"] == ["n"] and seen["query"]["rows"] == 1
    assert exact(seen["query"]["cost"]) == cost
    # Exact decimal arithmetic, end to end: spent grows by the cost, remaining shrinks by it.
    spent_before, spent_after = exact(before["spent"]), exact(after["spent"])
    assert (spent_after[0] - spent_before[0], spent_after[1] - spent_before[1]) == cost
    remaining_before, remaining_after = exact(before["remaining"]), exact(after["remaining"])
    assert (remaining_before[0] - remaining_after[0], remaining_before[1] - remaining_after[1]) == (
        cost
    )
    assert seen["previous_queries"]["count"] == 1
    assert [exact(c) for c in seen["previous_queries"]["costs"]] == [cost]
    assert seen["refusals"] == EXPECTED_REFUSALS


@pytest.mark.parametrize("platform", ["embedded"], indirect=True)
def test_every_client_sees_the_same_platform(
    scenario_platform: RunningMesh, tmp_path: Path
) -> None:
    observations: dict[str, dict[str, Any]] = {}
    for language, command in RUNNERS.items():
        workdir = tmp_path / language
        workdir.mkdir()
        env_path = environment(scenario_platform, f"scenario-{language}", workdir)
        observations[language] = run_scenario(command, env_path)
        check_observation(observations[language])
    reference = observations["python"]
    for language, seen in observations.items():
        assert seen == reference, f"{language} differs from the Python client"
