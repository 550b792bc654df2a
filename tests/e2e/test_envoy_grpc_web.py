"""gRPC-web end to end: the TypeScript client's browser transport (`@lomas/client/web`, run from
Node.js, whose fetch is the browser's) through a real Envoy started from the Kubernetes sidecar
configuration (its grpc_web and jwt_authn filters) in front of an envoy-mode gateway, against a
local OIDC provider. The check script (clients/typescript/src/web-check.ts) lists datasets, runs a
charged query, follows a job over the server stream, and meets a typed refusal and a token that
jwt_authn refuses; it prints what it saw, and the expectations are here."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy_testing import (
    AUDIENCE,
    ENVOY_CONFIG,
    LocalEnvoy,
    LocalOidcProvider,
    SigningKey,
    local_envoy_config,
)

from lomas.client.admin import AdminClient, approx_dp
from lomas_embedded import demo
from lomas_embedded.mesh import Mesh, MeshConfig
from lomas_embedded.ports import free_port
from lomas_embedded.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "clients" / "typescript" / "dist" / "web-check.js"
RESEARCHER = "grpc-web-researcher"
GRANT = ("10", "0.001")


@dataclass
class EdgePlatform:
    provider: LocalOidcProvider
    envoy: LocalEnvoy


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgePlatform]:
    """A mesh whose gateway trusts only its Envoy sidecar, and that Envoy, as Kubernetes runs it."""
    tmp = tmp_path_factory.mktemp("grpc-web")
    provider = LocalOidcProvider()
    redis = PrivateRedis(tmp / "redis")
    mesh = Mesh(
        MeshConfig(
            data_dir=tmp,
            redis_url=redis.url,
            admin_database_url=f"sqlite:///{tmp / 'admin.db'}",
            budget_database_url=f"sqlite:///{tmp / 'budget.db'}",
            jwks="",
            issuer=provider.issuer,
            audience=AUDIENCE,
            auth_mode="envoy",
            bootstrap_admin=demo.ADMIN,
        )
    )
    envoy: LocalEnvoy | None = None
    try:
        mesh.start()
        envoy = LocalEnvoy(
            local_envoy_config(
                yaml.safe_load(ENVOY_CONFIG.read_text()),
                listen_port=free_port(),
                admin_port=free_port(),
                gateway_target=mesh.gateway_target,
                provider=provider,
            ),
            tmp / "envoy",
        )
        envoy.wait_serving()
        with AdminClient(envoy.target, token=provider.token(demo.ADMIN)) as admin:
            demo.seed(admin, tmp)
            admin.add_user(RESEARCHER)
            admin.grant(RESEARCHER, demo.DATASET, approx_dp(*GRANT))
        yield EdgePlatform(provider, envoy)
    finally:
        if envoy is not None:
            envoy.stop()
        mesh.stop()
        redis.stop()
        provider.stop()


def run_check(env: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    env_path = tmp_path / "env.json"
    env_path.write_text(json.dumps(env))
    done = subprocess.run(
        ["node", str(SCRIPT), str(env_path)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def spent(budget: dict[str, str]) -> tuple[Decimal, Decimal]:
    return Decimal(budget["total_spent_epsilon"]), Decimal(budget["total_spent_delta"])


def remaining(budget: dict[str, str]) -> tuple[Decimal, Decimal]:
    return Decimal(budget["remaining_epsilon"]), Decimal(budget["remaining_delta"])


def test_the_browser_transport_through_envoy(edge: EdgePlatform, tmp_path: Path) -> None:
    env = {
        "url": f"http://{edge.envoy.target}",
        "dataset": demo.DATASET,
        "token": edge.provider.token(RESEARCHER),
        # Signed by a key the provider never published: only jwt_authn can refuse it.
        "invalid_token": edge.provider.token(RESEARCHER, key=SigningKey.generate()),
        "sql": "SELECT COUNT(*) AS n FROM df",
        "job_sql": "SELECT COUNT(*) AS n_job FROM df",
        "epsilon": "0.5",
        "delta": "0.00001",
        "exhausting_epsilon": "1000",
        "invalid_sql": "SELECT no_such_column FROM df",
    }
    seen = run_check(env, tmp_path)

    assert demo.DATASET in seen["datasets"]
    before, after, end = seen["budget_before"], seen["budget_after"], seen["budget_end"]
    grant = (Decimal(GRANT[0]), Decimal(GRANT[1]))
    assert spent(before) == (Decimal(0), Decimal(0)) and remaining(before) == grant

    # The charged query: its Arrow release and its exact cost, moved from remaining to spent.
    release = seen["release"]
    assert (release["columns"], release["rows"]) == (["n"], 1)
    assert release["cost"] == seen["cost"]  # what the estimate said, exactly
    cost = Decimal(release["cost"]["epsilon"]), Decimal(release["cost"]["delta"])
    assert cost[0] > 0
    assert spent(after) == cost
    assert remaining(after) == (grant[0] - cost[0], grant[1] - cost[1])

    # The job's events came over the gRPC-web server stream, ending with its release.
    job = seen["job"]
    assert job["states"][-1] == "done" and set(job["states"]) <= {"queued", "running", "done"}
    assert job["cost"] == release["cost"]

    # The gateway's refusals keep their ErrorInfo in the gRPC-web trailer frame.
    exhausted = seen["refusals"]["budget_exhausted"]
    assert (exhausted["error"], exhausted["code"], exhausted["reason"]) == (
        "BudgetExhausted",
        "RESOURCE_EXHAUSTED",
        "PRIVACY_BUDGET_EXHAUSTED",
    )
    assert Decimal(exhausted["metadata"]["remainingEpsilon"]) == grant[0] - 2 * cost[0]
    invalid = seen["refusals"]["invalid_sql"]
    assert (invalid["error"], invalid["code"], invalid["reason"]) == (
        "InvalidQuery",
        "INVALID_ARGUMENT",
        "QUERY_INVALID",
    )

    # jwt_authn's own refusal reaches the browser as gRPC-web too (no ErrorInfo: the reason is the
    # code's name), and nothing behind Envoy ran: only the two queries were charged.
    refused = seen["refusals"]["invalid_token"]
    assert (refused["error"], refused["code"], refused["reason"]) == (
        "Unauthenticated",
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
    )
    assert refused["message"] == "Jwks doesn't have key to match kid or alg from Jwt"
    assert spent(end) == (2 * cost[0], 2 * cost[1])
