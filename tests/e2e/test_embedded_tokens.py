"""`lomas-mesh token USER`: a token for any user an administrator adds, from the data directory's
development issuer. The token names the user and nothing more: the platform refuses it until an
administrator adds the user and a grant, then serves that user's queries on that user's budget."""

from __future__ import annotations

import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import jwt
import pytest
from mesh_testing import RunningMesh

from lomas.client import AccessDenied, Client
from lomas.client.admin import approx_dp
from lomas_embedded import demo

LOMAS_MESH = str(Path(sys.executable).parent / "lomas-mesh")
COUNT = "SELECT COUNT(*) AS n FROM df"


def lomas_mesh_token(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LOMAS_MESH, "token", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_data_directory_without_an_issuer_gives_no_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "never-run"
    result = lomas_mesh_token("Dr. New", "--data-dir", str(data_dir))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "no development issuer" in result.stderr and "lomas-mesh run" in result.stderr
    assert not data_dir.exists()  # refusing creates nothing, a key least of all


def test_a_ttl_must_be_positive(platform: RunningMesh) -> None:
    result = lomas_mesh_token("Dr. New", "--data-dir", str(platform.data_dir), "--ttl-days", "0")
    assert result.returncode == 2 and "positive" in result.stderr


def test_a_new_user_queries_with_the_printed_token(platform: RunningMesh) -> None:
    user = f"Dr. New {uuid.uuid4().hex[:8]}"
    result = lomas_mesh_token(user, "--data-dir", str(platform.data_dir), "--ttl-days", "2")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == user
    assert claims["exp"] - claims["iat"] == 2 * 24 * 3600

    # Before the administrator adds the user, the platform refuses the token's bearer.
    with Client(platform.target, token=token, dataset=demo.DATASET) as client:
        with pytest.raises(AccessDenied) as refused:
            client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=1e-5)
        assert (refused.value.code, refused.value.reason) == (
            "PERMISSION_DENIED",
            "DATASET_ACCESS_DENIED",
        )

    with platform.admin() as admin:
        admin.add_user(user)
        admin.grant(user, demo.DATASET, approx_dp("3", "0.001"))

    with Client(platform.target, token=token, dataset=demo.DATASET) as client:
        release = client.smartnoise_sql.query(COUNT, epsilon=1.0, delta=1e-5)
        assert len(release) == 1
        remaining = client.get_remaining_budget()
    # Charged to the new user's own grant, exactly what the release cost (a Laplace COUNT spends
    # no delta).
    cost = release.attrs["cost"]
    assert remaining["remaining_epsilon"] == Decimal("3") - cost["epsilon"] == Decimal("2")
    assert remaining["remaining_delta"] == Decimal("0.001") - cost["delta"]
