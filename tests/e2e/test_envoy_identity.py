"""Identity end to end: a real Envoy (jwt_authn) in front of the gateway, and the gateway verifying
tokens itself, both against a local OIDC provider; and the provider rotating its signing key.

One platform (real processes: admin store, budget ledger, executor, Celery worker) serves three
gateways: `envoy` mode behind a local Envoy started from k8s/base/gateway/envoy.yaml, `jwt` mode with
OIDC discovery, and `jwt` mode against a second provider that rotates its keys. Every refused call is
a real query that would be charged if it got through; the budget must not move.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lomas.client import AccessDenied, Client, LomasError, Unauthenticated
from lomas.client.admin import AdminClient, approx_dp
from lomas_embedded import demo
from lomas_embedded.mesh import Mesh, MeshConfig
from lomas_embedded.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = ROOT / "k8s" / "base" / "gateway" / "envoy.yaml"
ENVOY_BINARY = ROOT / ".tools" / "envoy" / "bin" / "envoy"
CLAIMS_HEADER = "x-lomas-jwt-payload"
AUDIENCE = "lomas"
SYSTEM_REDIS_URL = "redis://127.0.0.1:6379/0"
COUNT = "SELECT COUNT(*) AS n FROM df"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    private_key: rsa.RSAPrivateKey
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class LocalOidcProvider:
    """An OpenID provider on 127.0.0.1: the discovery document and the JWKS over HTTP (from a thread),
    RSA signing keys it can rotate and retire, and a count of JWKS fetches."""

    def __init__(self, realm: str = "lomas") -> None:
        self.signing = SigningKey.generate()
        self.published: list[SigningKey] = [self.signing]
        self.jwks_fetch_times: list[float] = []
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body: dict[str, Any]
                if self.path == provider.discovery_path:
                    body = {
                        "issuer": provider.issuer,
                        "jwks_uri": provider.jwks_uri,
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "subject_types_supported": ["public"],
                        "response_types_supported": ["code"],
                    }
                elif self.path == provider.jwks_path:
                    with provider._lock:
                        provider.jwks_fetch_times.append(time.monotonic())
                        body = {"keys": [key.jwk() for key in provider.published]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}/realms/{realm}"
        self.discovery_path = f"/realms/{realm}/.well-known/openid-configuration"
        self.jwks_path = f"/realms/{realm}/protocol/openid-connect/certs"
        self.jwks_uri = f"http://127.0.0.1:{self.port}{self.jwks_path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def jwks_fetches(self) -> int:
        with self._lock:
            return len(self.jwks_fetch_times)

    def rotate(self) -> SigningKey:
        """Publish a new key beside the current one and sign with it from now on."""
        with self._lock:
            self.signing = SigningKey.generate()
            self.published.append(self.signing)
            return self.signing

    def retire(self, key: SigningKey) -> None:
        with self._lock:
            self.published = [k for k in self.published if k.kid != key.kid]

    def claims(self, subject: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return claims

    def token(self, subject: str, *, key: SigningKey | None = None, **overrides: Any) -> str:
        key = key or self.signing
        return jwt.encode(
            self.claims(subject, **overrides),
            key.private_key,
            algorithm="RS256",
            headers={"kid": key.kid},
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def forged_tokens(provider: LocalOidcProvider, subject: str) -> dict[str, str]:
    """Every way a token can be wrong; none of them may get through."""
    now = int(time.time())
    key = provider.signing
    valid = provider.token(subject)
    header, payload, signature = valid.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["sub"] = demo.ADMIN
    unsigned = ".".join(
        [
            b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode()),
            b64url(json.dumps(provider.claims(subject)).encode()),
            "",
        ]
    )
    hs_signing_input = ".".join(
        [
            b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode()),
            b64url(json.dumps(provider.claims(subject)).encode()),
        ]
    )
    hs_signature = hmac.new(key.public_pem(), hs_signing_input.encode(), hashlib.sha256).digest()
    return {
        "no token": "",
        "expired": provider.token(subject, iat=now - 1200, nbf=now - 1200, exp=now - 600),
        "not yet valid": provider.token(subject, nbf=now + 600, exp=now + 1200),
        "wrong issuer": provider.token(subject, iss="https://elsewhere.example.org/realms/lomas"),
        "wrong audience": provider.token(subject, aud="someone-else"),
        "unknown kid": provider.token(subject, key=SigningKey.generate()),
        "alg none": unsigned,
        "HS256 signed with the public key": f"{hs_signing_input}.{b64url(hs_signature)}",
        "tampered payload": f"{header}.{b64url(json.dumps(tampered).encode())}.{signature}",
        "not a JWT": "not-a-jwt",
    }


def local_envoy_config(
    base: dict[str, Any],
    *,
    listen_port: int,
    admin_port: int,
    gateway_target: str,
    provider: LocalOidcProvider,
) -> dict[str, Any]:
    """The Kubernetes Envoy configuration with this machine's addresses: the same filters and rules;
    listener, admin, gateway and JWKS addresses local, and the provider reached over plain HTTP."""
    config = copy.deepcopy(base)
    config["admin"]["address"]["socket_address"] = {
        "address": "127.0.0.1",
        "port_value": admin_port,
    }
    resources = config["static_resources"]
    (listener,) = [x for x in resources["listeners"] if x["name"] == "public_grpc"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen_port}
    (hcm,) = listener["filter_chains"][0]["filters"]
    (jwt_authn,) = [
        f
        for f in hcm["typed_config"]["http_filters"]
        if f["name"] == "envoy.filters.http.jwt_authn"
    ]
    oidc = jwt_authn["typed_config"]["providers"]["oidc"]
    oidc["issuer"] = provider.issuer
    oidc["audiences"] = [AUDIENCE]
    oidc["remote_jwks"]["http_uri"]["uri"] = provider.jwks_uri
    host, port = gateway_target.rsplit(":", 1)
    for cluster in resources["clusters"]:
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        if cluster["name"] == "lomas_gateway":
            address["address"]["socket_address"] = {"address": host, "port_value": int(port)}
        elif cluster["name"] == "oidc_provider":
            cluster["type"] = "STATIC"
            cluster.pop("dns_lookup_family", None)
            cluster.pop("transport_socket", None)
            address["address"]["socket_address"] = {
                "address": "127.0.0.1",
                "port_value": provider.port,
            }
    return config


class LocalEnvoy:
    """The pinned Envoy binary (scripts/setup-envoy.sh) running one configuration."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        if not ENVOY_BINARY.exists():
            raise RuntimeError(f"{ENVOY_BINARY} is missing: run scripts/setup-envoy.sh")
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "envoy.yaml"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = directory / "envoy.log"
        listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
        self.target = f"127.0.0.1:{listener['port_value']}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(ENVOY_BINARY),
                    "-c",
                    str(self.config_path),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_serving(self, timeout: float = 30.0, *, gateway: bool = True) -> None:
        """Until a health check through the listener is answered (by a SERVING gateway, when
        `gateway`). Health checks need no token, so this also proves the route to the upstream."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"envoy exited: {self.log_path.read_text()[-3000:]}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    if not gateway or status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"envoy not serving: {self.log_path.read_text()[-3000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


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
    with AdminClient(target, token=identity.provider.token(researcher)) as admin:
        admin._metadata = (*admin._metadata, (CLAIMS_HEADER, forged))
        with pytest.raises(AccessDenied) as refused:
            admin.add_user(f"mallory-{uuid.uuid4().hex[:6]}", admin=True)
    assert (refused.value.code, refused.value.reason) == (
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


class RecordingUpstream:
    """A gRPC server that answers every unary call with an empty message and records its metadata:
    what Envoy actually forwards to the gateway."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []
        upstream = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                def record(request: bytes, context: grpc.ServicerContext) -> bytes:
                    metadata = [
                        (k, v) for k, v in context.invocation_metadata() if isinstance(v, str)
                    ]
                    upstream.calls.append((details.method, metadata))
                    return b""

                return grpc.unary_unary_rpc_method_handler(record)

        from concurrent.futures import ThreadPoolExecutor

        self.server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[Handler()])
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


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
            call = channel.unary_unary("/lomas.gateway.v1.GatewayService/GetDatasetMetadata")
            call(b"", metadata=[(CLAIMS_HEADER, forged), ("authorization", f"Bearer {token}")])
            health = channel.unary_unary("/grpc.health.v1.Health/Check")
            health(b"", metadata=[(CLAIMS_HEADER, forged)])
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
