"""Who is calling: RS256 JWTs verified against the issuer's JWKS (a file or a URL).

Identity is the token's `sub`, never a header the caller can set. Roles come from the admin store.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from lomas_common.errors import Unauthenticated
from lomas_common.server import Authenticator

ALLOWED_ALGORITHMS = ["RS256"]
LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class Caller:
    """A verified caller."""

    subject: str


caller_var: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller:
    caller = caller_var.get()
    if caller is None:  # the authenticator runs before every handler, so this is a wiring bug
        raise Unauthenticated("no verified caller")
    return caller


class JwksKeys:
    """Signing keys by `kid`, from a JWKS file (re-read when it changes) or URL (refetched on an unknown kid,
    at most once per `min_refetch_seconds`)."""

    def __init__(self, source: str, *, min_refetch_seconds: float = 30.0) -> None:
        self._source = source
        self._min_refetch = min_refetch_seconds
        self._keys: dict[str, Any] = {}
        self._loaded_at = float("-inf")
        self._file_mtime = 0.0
        self._lock = threading.Lock()

    def _fetch(self) -> dict[str, Any]:
        if self._source.startswith(("http://", "https://")):
            jwks = jwt.PyJWKClient(self._source, cache_keys=False).get_jwk_set()
        else:
            jwks = jwt.PyJWKSet.from_dict(json.loads(Path(self._source).read_text()))
        return {key.key_id: key.key for key in jwks.keys if key.key_id}

    def get(self, kid: str) -> Any:
        with self._lock:
            if not self._source.startswith(("http://", "https://")):
                mtime = Path(self._source).stat().st_mtime
                if mtime != self._file_mtime:
                    self._keys, self._file_mtime = self._fetch(), mtime
            elif kid not in self._keys and time.monotonic() - self._loaded_at >= self._min_refetch:
                self._loaded_at = time.monotonic()
                self._keys = self._fetch()
            key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("token signed by an unknown key")
        return key


class JwtVerifier:
    """Verifies signature, expiry, not-before, issuer and audience; returns the caller."""

    def __init__(self, keys: JwksKeys, *, issuer: str, audience: str) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience

    def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise Unauthenticated("token algorithm not allowed")
        key = self._keys.get(str(header.get("kid", "")))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=ALLOWED_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from None
        except jwt.PyJWTError:
            raise Unauthenticated("token rejected") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("token has no subject")
        return Caller(subject=subject)


class BearerAuthenticator(Authenticator):
    """The gateway's authenticator: every RPC except health and reflection needs a valid bearer token."""

    def __init__(self, verifier: JwtVerifier) -> None:
        self._verifier = verifier

    async def authenticate(self, method: str, metadata: dict[str, str]) -> None:
        caller_var.set(None)
        if method.startswith("/grpc.health.") or method.startswith("/grpc.reflection."):
            return
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("a bearer token is required", reason="TOKEN_MISSING")
        caller_var.set(self._verifier.verify(token.strip()))
