"""Identity end to end: a real Envoy (jwt_authn) in front of the gateway, and the gateway verifying
tokens itself, both against a local OIDC provider; and the provider rotating its signing key.

One platform (real processes: admin store, budget ledger, executor, Celery worker) serves three
gateways: `envoy` mode behind a local Envoy started from k8s/base/gateway/envoy.yaml, `jwt` mode with
OIDC discovery, and `jwt` mode against a second provider that rotates its keys. Every refused call is
a real query that would be charged if it got through; the budget must not move.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import yaml
from envoy_testing import (
    AUDIENCE,
    CLAIMS_HEADER,
    ENVOY_CONFIG,
    LocalEnvoy,
    LocalOidcProvider,
    RecordingUpstream,
    SigningKey,
    b64url,
    forged_tokens,
    local_envoy_config,
)

from lomas.admin.v1 import resources_pb2
from lomas.client import AccessDenied, Client, LomasError, Unauthenticated
from lomas.client.admin import AdminClient, approx_dp
from lomas.client.errors import from_rpc_error
from lomas.gateway.v1 import admin_pb2, admin_pb2_grpc
from lomas_embedded import demo
from lomas_embedded.mesh import Mesh, MeshConfig
from lomas_embedded.ports import free_port

SYSTEM_REDIS_URL = "redis://127.0.0.1:6379/0"
COUNT = "SELECT COUNT(*) AS n FROM df"


@dataclass
class Identity:
    mesh: Mesh
    provider: LocalOidcProvider
    rotating: LocalOidcProvider
    envoy: LocalEnvoy
    envoy_gateway: str  # the envoy-mode gateway, on loopback (only Envoy should call it)
    jwt_gateway: str  # a jwt-mode gateway (OIDC discovery from `provider`)
    rotation_gateway: str  # a jwt-mode gateway trusting `rotating`


ROTATION_MIN_REFETCH_SECONDS = 2.0
ROTATION_MAX_AGE_SECONDS = 6.0


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    tmp = tmp_path_factory.mktemp("identity")
    provider = LocalOidcProvider()
    rotating = LocalOidcProvider(realm="rotating")
    mesh = Mesh(
        MeshConfig(
            data_dir=tmp,
            redis_url=SYSTEM_REDIS_URL,
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
        jwt_gateway = f"127.0.0.1:{free_port()}"
        rotation_gateway = f"127.0.0.1:{free_port()}"
        started = [
            mesh.start_service(
                "gateway-jwt", listen=jwt_gateway, gateway_env={"LOMAS_AUTH_MODE": "jwt"}
            ),
            mesh.start_service(
                "gateway-rotation",
                listen=rotation_gateway,
                gateway_env={
                    "LOMAS_AUTH_MODE": "jwt",
                    "LOMAS_JWT_ISSUER": rotating.issuer,
                    "LOMAS_JWKS_MIN_REFETCH_SECONDS": str(ROTATION_MIN_REFETCH_SECONDS),
                    "LOMAS_JWKS_MAX_AGE_SECONDS": str(ROTATION_MAX_AGE_SECONDS),
                },
            ),
        ]
        base = yaml.safe_load(ENVOY_CONFIG.read_text())
        envoy = LocalEnvoy(
            local_envoy_config(
                base,
                listen_port=free_port(),
                admin_port=free_port(),
                gateway_target=mesh.gateway_target,
                provider=provider,
            ),
            tmp / "envoy",
        )
        for service in started:
            mesh.wait_healthy(service, 60)
        envoy.wait_serving()
        with AdminClient(envoy.target, token=provider.token(demo.ADMIN)) as admin:
            demo.seed(admin, tmp)
        yield Identity(
            mesh, provider, rotating, envoy, mesh.gateway_target, jwt_gateway, rotation_gateway
        )
    finally:
        if envoy is not None:
            envoy.stop()
        mesh.stop()
        provider.stop()
        rotating.stop()


def new_researcher(identity: Identity) -> str:
    name = f"researcher-{uuid.uuid4().hex[:8]}"
    with AdminClient(identity.envoy.target, token=identity.provider.token(demo.ADMIN)) as admin:
        admin.add_user(name)
        admin.grant(name, demo.DATASET, approx_dp("1", "0.001"))
    return name


def budget(target: str, token: str) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    with Client(target, token=token, dataset=demo.DATASET) as client:
        return client.get_total_spent_budget(), client.get_remaining_budget()


def refused_query(target: str, token: str, extra: tuple[tuple[str, str], ...] = ()) -> LomasError:
    """A real query, which would be charged if it got through. An empty token sends no
    Authorization header at all; `extra` is metadata a caller adds to its call."""
    with Client(target, token=token, dataset=demo.DATASET) as client:
        client._metadata = (*(client._metadata if token else ()), *extra)
        with pytest.raises(LomasError) as refused:
            client.smartnoise_sql.query(COUNT, epsilon=0.1, delta=0)
    return refused.value


# What Envoy 1.40's jwt_authn answers: a local reply, 401 (or 403 for a wrong audience) that Envoy turns
# into gRPC UNAUTHENTICATED (PERMISSION_DENIED) with the failure as grpc-message and no ErrorInfo.
MALFORMED = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
ENVOY_REFUSALS = {
    "no token": ("UNAUTHENTICATED", "Jwt is missing"),
    "expired": ("UNAUTHENTICATED", "Jwt is expired"),
    "not yet valid": ("UNAUTHENTICATED", "Jwt not yet valid"),
    "wrong issuer": ("UNAUTHENTICATED", "Jwt issuer is not configured"),
    "wrong audience": ("PERMISSION_DENIED", "Audiences in Jwt are not allowed"),
    "unknown kid": ("UNAUTHENTICATED", "Jwks doesn't have key to match kid or alg from Jwt"),
    "HS256 signed with the public key": (
        "UNAUTHENTICATED",
        "Jwks doesn't have key to match kid or alg from Jwt",
    ),
    "tampered payload": ("UNAUTHENTICATED", "Jwt verification fails"),
}


def test_envoy_serves_valid_tokens_and_refuses_every_bad_one_before_the_gateway(
    identity: Identity,
) -> None:
    researcher = new_researcher(identity)
    target = identity.envoy.target
    token = identity.provider.token(researcher)
    before = budget(target, token)

    for case, bad in forged_tokens(identity.provider, researcher).items():
        error = refused_query(target, bad)
        code, message = ENVOY_REFUSALS.get(case, ("UNAUTHENTICATED", MALFORMED))
        # No ErrorInfo from Envoy: the client's reason falls back to the status code's name.
        assert (error.code, error.reason, error.message) == (code, code, message), case
    assert budget(target, token) == before

    with Client(target, token=token, dataset=demo.DATASET) as client:
        release = client.smartnoise_sql.query(COUNT, epsilon=0.1, delta=0)
    assert list(release.columns) == ["n"]
    spent, remaining = budget(target, token)
    assert spent["total_spent_epsilon"] > before[0]["total_spent_epsilon"]
    assert remaining["remaining_epsilon"] < before[1]["remaining_epsilon"]


def test_a_claims_header_sent_by_the_caller_is_ignored(identity: Identity) -> None:
    researcher = new_researcher(identity)
    target = identity.envoy.target
    forged = b64url(json.dumps(identity.provider.claims(demo.ADMIN)).encode())
    before = budget(target, identity.provider.token(researcher))

    # Without a token, a forged claims header does not get past Envoy.
    error = refused_query(target, "", extra=((CLAIMS_HEADER, forged),))
    assert (error.code, error.reason) == ("UNAUTHENTICATED", "UNAUTHENTICATED")

    # With a researcher's valid token, the gateway sees the researcher, not the forged admin.
    mallory = resources_pb2.User(
        name=f"mallory-{uuid.uuid4().hex[:6]}", role=resources_pb2.ROLE_ADMIN
    )
    metadata = (
        ("authorization", f"Bearer {identity.provider.token(researcher)}"),
        (CLAIMS_HEADER, forged),
    )
    with grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as raw:
            admin_pb2_grpc.AdminServiceStub(channel).CreateUser(
                admin_pb2.CreateUserRequest(user=mallory), metadata=metadata, timeout=60
            )
    refused = from_rpc_error(raw.value)
    assert isinstance(refused, AccessDenied)
    assert (refused.code, refused.reason) == (
        "PERMISSION_DENIED",
        "ADMIN_ROLE_REQUIRED",
    )
    with AdminClient(target, token=identity.provider.token(demo.ADMIN)) as admin:
        assert not [u for u in admin.list_users() if u.name.startswith("mallory-")]
    assert budget(target, identity.provider.token(researcher)) == before


def test_the_envoy_mode_gateway_ignores_authorization_headers(identity: Identity) -> None:
    """Behind Envoy, a bearer token that reaches the gateway itself proves nothing."""
    researcher = new_researcher(identity)
    error = refused_query(identity.envoy_gateway, identity.provider.token(researcher))
    assert (error.code, error.reason) == ("UNAUTHENTICATED", "TOKEN_MISSING")


JWT_MODE_REASONS = {
    "no token": "TOKEN_MISSING",
    "expired": "TOKEN_EXPIRED",
}


def test_the_jwt_mode_gateway_refuses_every_bad_token_with_a_reason(identity: Identity) -> None:
    researcher = new_researcher(identity)
    target = identity.jwt_gateway
    token = identity.provider.token(researcher)
    before = budget(target, token)  # served: the keys came from OIDC discovery

    for case, bad in forged_tokens(identity.provider, researcher).items():
        error = refused_query(target, bad)
        assert isinstance(error, Unauthenticated), (case, error)
        expected = JWT_MODE_REASONS.get(case, "TOKEN_INVALID")
        assert (error.code, error.reason) == ("UNAUTHENTICATED", expected), (case, error)
    assert budget(target, token) == before


def wait_until_keys_age_out(provider: LocalOidcProvider) -> None:
    last_fetch = provider.jwks_fetch_times[-1]
    time.sleep(max(0.0, last_fetch + ROTATION_MAX_AGE_SECONDS + 0.3 - time.monotonic()))


def test_key_rotation_one_refetch_for_a_new_key_and_a_retired_key_stops_working(
    identity: Identity,
) -> None:
    provider, target = identity.rotating, identity.rotation_gateway
    old = provider.signing
    with Client(target, token=provider.token(demo.RESEARCHER), dataset=demo.DATASET) as client:
        client.get_dataset_metadata()
    fetches = provider.jwks_fetches
    assert fetches >= 1

    new = provider.rotate()
    time.sleep(ROTATION_MIN_REFETCH_SECONDS + 0.1)  # the refetch is rate-limited
    for _ in range(3):  # the first token with the new kid refetches once; the others use the cache
        with Client(target, token=provider.token(demo.RESEARCHER), dataset=demo.DATASET) as client:
            client.get_dataset_metadata()
    assert provider.jwks_fetches == fetches + 1
    with Client(
        target, token=provider.token(demo.RESEARCHER, key=old), dataset=demo.DATASET
    ) as client:
        client.get_dataset_metadata()  # still published: still valid
    assert provider.jwks_fetches == fetches + 1

    # Unknown kids cannot make the gateway hammer the provider: at most one refetch per interval.
    time.sleep(ROTATION_MIN_REFETCH_SECONDS + 0.1)
    for _ in range(5):
        stranger = provider.token(demo.RESEARCHER, key=SigningKey.generate())
        error = refused_query(target, stranger)
        assert (error.code, error.reason) == ("UNAUTHENTICATED", "TOKEN_INVALID")
    assert provider.jwks_fetches == fetches + 2

    provider.retire(old)
    old_token = provider.token(demo.RESEARCHER, key=old)
    wait_until_keys_age_out(provider)
    error = refused_query(target, old_token)
    assert (error.code, error.reason) == ("UNAUTHENTICATED", "TOKEN_INVALID")
    assert "unknown key" in error.message
    assert provider.jwks_fetches == fetches + 3  # the aged-out keys were fetched again, once
    assert [k.kid for k in provider.published] == [new.kid]
    with Client(target, token=provider.token(demo.RESEARCHER), dataset=demo.DATASET) as client:
        client.get_dataset_metadata()


def test_envoy_forwards_only_its_own_verified_claims(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    provider = LocalOidcProvider()
    envoy = LocalEnvoy(
        local_envoy_config(
            yaml.safe_load(ENVOY_CONFIG.read_text()),
            listen_port=free_port(),
            admin_port=free_port(),
            gateway_target=upstream.target,
            provider=provider,
        ),
        tmp_path / "envoy",
    )
    forged = b64url(json.dumps(provider.claims(demo.ADMIN)).encode())
    token = provider.token("someone")
    try:
        envoy.wait_serving(gateway=False)  # health checks need no token, so carry no claims
        with grpc.insecure_channel(envoy.target) as channel:
            # No serializers: empty request bytes, and the recorder answers empty bytes.
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/lomas.gateway.v1.GatewayService/GetDatasetMetadata"
            )
            call(b"", metadata=((CLAIMS_HEADER, forged), ("authorization", f"Bearer {token}")))
            health: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/grpc.health.v1.Health/Check"
            )
            health(b"", metadata=((CLAIMS_HEADER, forged),))
    finally:
        envoy.stop()
        upstream.server.stop(None)
        provider.stop()
    (_, verified), (_, unauthenticated) = upstream.calls[-2:]
    assert [v for k, v in verified if k == CLAIMS_HEADER] != [forged]
    (payload,) = [v for k, v in verified if k == CLAIMS_HEADER]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert (claims["sub"], claims["iss"]) == ("someone", provider.issuer)
    assert "authorization" not in {k for k, _ in verified}  # the token itself is not forwarded
    assert CLAIMS_HEADER not in {k for k, _ in unauthenticated}  # stripped where no JWT is checked
