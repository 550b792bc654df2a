"""What the identity tests (`test_envoy_identity.py`) run against, besides the mesh: a local OIDC
provider with rotating RSA keys, a real Envoy started from k8s/base/gateway/envoy.yaml pointed at it,
and a gRPC upstream that records what Envoy forwards."""

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2

from lomas_common.peers import health_check
from lomas_embedded import demo

ROOT = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = ROOT / "k8s" / "base" / "gateway" / "envoy.yaml"
ENVOY_BINARY = ROOT / ".tools" / "envoy" / "bin" / "envoy"
CLAIMS_HEADER = "x-lomas-jwt-payload"
AUDIENCE = "lomas"


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
            check = health_check(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"envoy exited: {self.log_path.read_text()[-3000:]}")
                try:
                    status = check(health_pb2.HealthCheckRequest(), timeout=1.0).status
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


class RecordingUpstream:
    """A gRPC server that answers every unary call with an empty message and records its metadata:
    what Envoy actually forwards to the gateway."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []
        upstream = self

        class Handler(grpc.GenericRpcHandler):
            def service(
                self, details: grpc.HandlerCallDetails
            ) -> grpc.RpcMethodHandler[bytes, bytes]:
                def record(request: bytes, context: grpc.ServicerContext) -> bytes:
                    metadata = [
                        (k, v) for k, v in context.invocation_metadata() if isinstance(v, str)
                    ]
                    upstream.calls.append((details.method, metadata))
                    return b""

                return grpc.unary_unary_rpc_method_handler(record)

        self.server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[Handler()])
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()
