"""Authentication settings: what the gateway refuses to start with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lomas_gateway.settings import AuthSettings, GatewaySettings, is_local_listen_address

BASE_ENV = {
    "LOMAS_REDIS_URL": "redis://127.0.0.1:6379/0",
    "LOMAS_ADMIN_TARGET": "127.0.0.1:1",
    "LOMAS_BUDGET_TARGET": "127.0.0.1:2",
    "LOMAS_EXECUTOR_TARGET": "127.0.0.1:3",
}


def settings(**env: str) -> GatewaySettings:
    return GatewaySettings.from_env({**BASE_ENV, **{f"LOMAS_{k}": v for k, v in env.items()}})


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:50051", "127.0.0.2:7", "localhost:50051", "[::1]:50051", "unix:/run/g.sock"],
)
def test_envoy_mode_listens_on_loopback_or_a_unix_socket(listen: str) -> None:
    auth = settings(AUTH_MODE="envoy", LISTEN=listen).auth
    assert (auth.mode, auth.claims_header) == ("envoy", "x-lomas-jwt-payload")
    assert is_local_listen_address(listen)


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "gateway:50051", ":50051"]
)
def test_envoy_mode_refuses_to_listen_where_others_can_reach_it(listen: str) -> None:
    with pytest.raises(SystemExit, match="loopback address or a unix socket"):
        settings(AUTH_MODE="envoy", LISTEN=listen)


def test_the_gateway_process_refuses_to_start_in_envoy_mode_on_a_public_address() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOMAS_")}
    env |= BASE_ENV | {"LOMAS_AUTH_MODE": "envoy", "LOMAS_LISTEN": "0.0.0.0:0"}
    result = subprocess.run(
        [sys.executable, "-m", "lomas_gateway.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "LOMAS_LISTEN must be a loopback address or a unix socket" in result.stderr


def test_jwt_is_the_default_mode_and_keeps_the_embedded_jwks_file(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    auth = settings(JWKS=str(jwks), JWT_ISSUER="https://lomas-mesh.local/dev-issuer").auth
    assert auth == AuthSettings(
        mode="jwt", issuer="https://lomas-mesh.local/dev-issuer", jwks=str(jwks)
    )
    # A public listener is fine in jwt mode: the gateway verifies tokens itself.
    assert settings(LISTEN="0.0.0.0:50051", JWT_ISSUER="https://idp.example.org").auth.mode == "jwt"


def test_jwt_mode_needs_an_issuer() -> None:
    with pytest.raises(SystemExit, match="LOMAS_JWT_ISSUER must be set"):
        settings()


@pytest.mark.parametrize("algorithms", ["HS256", "RS256,HS512", "none", " "])
def test_jwt_mode_accepts_public_key_algorithms_only(algorithms: str) -> None:
    with pytest.raises(SystemExit, match="public-key algorithms only"):
        settings(JWT_ISSUER="https://idp.example.org", JWT_ALGORITHMS=algorithms)


def test_jwt_mode_takes_several_audiences_and_algorithms() -> None:
    auth = settings(
        JWT_ISSUER="https://idp.example.org",
        JWT_AUDIENCE="lomas, lomas-cli",
        JWT_ALGORITHMS="RS256,ES256",
    ).auth
    assert (auth.audiences, auth.algorithms) == (("lomas", "lomas-cli"), ("RS256", "ES256"))


@pytest.mark.parametrize(
    ("env", "accepted"),
    [
        ({"JWT_ISSUER": "https://idp.example.org/realms/x"}, True),
        ({"JWT_ISSUER": "http://127.0.0.1:8080/realms/x"}, True),
        ({"JWT_ISSUER": "http://localhost:8080"}, True),
        ({"JWT_ISSUER": "http://idp.example.org/realms/x"}, False),
        ({"JWT_ISSUER": "idp.example.org"}, False),
        ({"JWT_ISSUER": "x", "JWKS": "https://idp.example.org/certs"}, True),
        ({"JWT_ISSUER": "x", "JWKS": "http://idp.example.org/certs"}, False),
    ],
)
def test_keys_are_fetched_over_https_or_from_this_machine(
    env: dict[str, str], accepted: bool
) -> None:
    if accepted:
        settings(**env)
    else:
        with pytest.raises(SystemExit, match="https://"):
            settings(**env)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(SystemExit, match="LOMAS_AUTH_MODE must be one of jwt, envoy"):
        settings(AUTH_MODE="header", JWT_ISSUER="https://idp.example.org")
