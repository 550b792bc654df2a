"""Gateway settings, from `LOMAS_` environment variables."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from lomas_common.peers import PeerSettings
from lomas_common.queue import QueueSettings
from lomas_common.settings import ServerSettings, env_float, env_int, env_required, env_str
from lomas_gateway.limits import LimitSettings

DEFAULT_PORT = 50051

AUTH_MODES = ("jwt", "envoy")
# Public-key algorithms only: a shared-secret (HS*) or unsigned ("none") token is never accepted.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_CLAIMS_HEADER = "x-lomas-jwt-payload"
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def is_local_listen_address(listen: str) -> bool:
    """True for a unix socket or a loopback host: addresses no other machine can reach."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen.rpartition(":")[0] if ":" in listen else listen
    return _is_loopback_host(host.strip("[]"))


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_fetch_url(url: str, what: str) -> None:
    """Keys are fetched over HTTPS; plain HTTP only from this machine (a local issuer, tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback_host(parts.hostname):
        return
    raise SystemExit(f"{what} must be an https:// URL (http:// only on a loopback host): {url!r}")


@dataclass(frozen=True)
class AuthSettings:
    """How the gateway learns who is calling.

    * `jwt`: the gateway verifies the bearer token itself (signature, expiry, not-before, issuer,
      audience) against the issuer's keys: a JWKS file or URL (`LOMAS_JWKS`), or else the `jwks_uri`
      of the issuer's OIDC discovery document (`LOMAS_JWT_ISSUER` + /.well-known/openid-configuration).
    * `envoy`: an Envoy sidecar verified the token; the gateway trusts only the verified claims Envoy
      forwards in `claims_header` and ignores any Authorization header. It therefore refuses to
      listen anywhere but on loopback or a unix socket, where only the sidecar can reach it.
    """

    mode: str = "jwt"
    issuer: str = ""  # jwt: required; envoy: when set, the forwarded `iss` must match too
    audiences: tuple[str, ...] = ("lomas",)  # a token must name one of them
    jwks: str = ""  # a JWKS file path or URL; empty: OIDC discovery from the issuer (jwt mode)
    algorithms: tuple[str, ...] = ("RS256",)
    leeway_seconds: float = 5.0
    jwks_min_refetch_seconds: float = 30.0  # an unknown `kid` refetches the keys at most this often
    jwks_max_age_seconds: float = 600.0  # fetched keys are refreshed after this (as Envoy's cache)
    jwks_fetch_timeout_seconds: float = 5.0
    claims_header: str = DEFAULT_CLAIMS_HEADER  # envoy mode: Envoy's `forward_payload_header`

    def check(self, listen: str) -> None:
        """Refuse (SystemExit) a configuration that would trust the wrong thing."""
        if self.mode not in AUTH_MODES:
            raise SystemExit(f"LOMAS_AUTH_MODE must be one of {', '.join(AUTH_MODES)}")
        if self.mode == "envoy":
            if not is_local_listen_address(listen):
                raise SystemExit(
                    "LOMAS_AUTH_MODE=envoy trusts a claims header that only the Envoy sidecar may "
                    f"set, so LOMAS_LISTEN must be a loopback address or a unix socket, not {listen!r}"
                )
            if not _HEADER_NAME.match(self.claims_header) or self.claims_header == "authorization":
                raise SystemExit("LOMAS_CLAIMS_HEADER must be a lower-case header name")
            return
        if not self.issuer:
            raise SystemExit("LOMAS_JWT_ISSUER must be set")
        if not self.audiences:
            raise SystemExit("LOMAS_JWT_AUDIENCE must name at least one audience")
        unsafe = [a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if unsafe or not self.algorithms:
            raise SystemExit(
                "LOMAS_JWT_ALGORITHMS takes public-key algorithms only "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}), not {', '.join(unsafe) or 'nothing'}"
            )
        if self.jwks.startswith(("http://", "https://")):
            check_fetch_url(self.jwks, "LOMAS_JWKS")
        elif not self.jwks:
            check_fetch_url(self.issuer, "LOMAS_JWT_ISSUER (used for OIDC discovery)")

    def describe(self) -> str:
        """One line for the log: whom the gateway trusts."""
        if self.mode == "envoy":
            return (
                f"envoy mode: trusting the claims that the sidecar forwards in {self.claims_header}"
            )
        keys = self.jwks or f"OIDC discovery from {self.issuer}"
        return f"jwt mode: tokens from {self.issuer} for {', '.join(self.audiences)}, keys: {keys}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuthSettings:
        return cls(
            mode=env_str(env, "AUTH_MODE", "jwt").strip().lower(),
            issuer=env_str(env, "JWT_ISSUER", ""),
            audiences=_split(env_str(env, "JWT_AUDIENCE", "lomas")),
            jwks=env_str(env, "JWKS", ""),
            algorithms=_split(env_str(env, "JWT_ALGORITHMS", "RS256")),
            leeway_seconds=env_float(env, "JWT_LEEWAY_SECONDS", 5.0),
            jwks_min_refetch_seconds=env_float(env, "JWKS_MIN_REFETCH_SECONDS", 30.0),
            jwks_max_age_seconds=env_float(env, "JWKS_MAX_AGE_SECONDS", 600.0),
            jwks_fetch_timeout_seconds=env_float(env, "JWKS_FETCH_TIMEOUT_SECONDS", 5.0),
            claims_header=env_str(env, "CLAIMS_HEADER", DEFAULT_CLAIMS_HEADER).strip().lower(),
        )


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class GatewaySettings:
    server: ServerSettings
    peers: PeerSettings
    queue: QueueSettings
    admin_target: str
    budget_target: str
    executor_target: str
    auth: AuthSettings
    query_timeout_seconds: float
    max_dummy_rows: int
    max_query_chars: int
    limits: LimitSettings
    # How long a grant read under an unchanged access generation is trusted at most (access.py);
    # 0 reads every grant from the admin store.
    access_cache_seconds: float = 30.0

    def __post_init__(self) -> None:
        self.auth.check(self.server.listen)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if env is None else env
        server = ServerSettings.from_env(env, default_port=DEFAULT_PORT)
        return cls(
            server=server,
            peers=PeerSettings(
                service_token=server.service_token,
                max_message_bytes=server.max_message_bytes,
                otel_exporter=server.otel_exporter,
            ),
            queue=QueueSettings(
                broker_url=env_required(env, "REDIS_URL"),
                prefix=env_str(env, "QUEUE_PREFIX", "lomas"),
                task_time_limit_seconds=env_int(env, "TASK_TIME_LIMIT_SECONDS", 300),
            ),
            admin_target=env_required(env, "ADMIN_TARGET"),
            budget_target=env_required(env, "BUDGET_TARGET"),
            executor_target=env_required(env, "EXECUTOR_TARGET"),
            auth=AuthSettings.from_env(env),
            query_timeout_seconds=env_float(env, "QUERY_TIMEOUT_SECONDS", 330.0),
            max_dummy_rows=env_int(env, "MAX_DUMMY_ROWS", 1_000_000),
            max_query_chars=env_int(env, "MAX_QUERY_CHARS", 100_000),
            limits=LimitSettings(
                requests_per_second=env_int(env, "RATE_LIMIT_PER_SECOND", 200),
                concurrent_queries=env_int(env, "MAX_CONCURRENT_QUERIES_PER_USER", 64),
                query_timeout_seconds=env_float(env, "QUERY_TIMEOUT_SECONDS", 330.0),
                response_min_seconds=env_float(env, "RESPONSE_MIN_SECONDS", 0.0),
                response_quantum_seconds=env_float(env, "RESPONSE_QUANTUM_SECONDS", 0.0),
                # Cost estimates, dummy queries and dummy datasets in flight per user (0: no cap).
                concurrent_free_calls=env_int(env, "MAX_CONCURRENT_FREE_CALLS_PER_USER", 4),
            ),
            access_cache_seconds=env_float(env, "ACCESS_CACHE_SECONDS", 30.0),
        )
