"""Who is calling. Two modes (`LOMAS_AUTH_MODE`, see `settings.AuthSettings`):

* `jwt`: the gateway verifies bearer JWTs itself against the issuer's keys (a JWKS file, a JWKS URL, or
  the `jwks_uri` found by OIDC discovery from the issuer). An unknown `kid` triggers one rate-limited
  refetch, so the issuer can rotate keys; fetched keys age out, so a retired key stops verifying.
* `envoy`: an Envoy sidecar (`jwt_authn`) verified the token and forwards its payload in one header,
  which it strips from what the caller sent. The gateway trusts that header only, ignores any
  Authorization header, and listens only where the sidecar alone can reach it (checked in settings).

Identity is the verified token's `sub`, never a header the caller can set. Roles come from the admin store.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any

import jwt

from lomas_common.errors import BackendUnavailable, Unauthenticated
from lomas_common.server import Authenticator
from lomas_gateway.recent import RecentlyUsed
from lomas_gateway.settings import AuthSettings, check_fetch_url

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_DOCUMENT_BYTES = 1024 * 1024


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


def _is_public_method(method: str) -> bool:
    return method.startswith("/grpc.health.") or method.startswith("/grpc.reflection.")


@dataclass(frozen=True)
class SigningKey:
    """One verification key from a JWKS, with the algorithm it is published for (if it says)."""

    key: Any
    algorithm: str  # the JWK's `alg`, or "" when the JWK does not restrict it


def parse_jwks(document: Any) -> dict[str, SigningKey]:
    """Signature keys by `kid`; keys without a `kid`, for encryption, or of unknown types are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, SigningKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        keys[entry["kid"]] = SigningKey(jwk.key, str(entry.get("alg", "")))
    return keys


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to where keys may come from (https, or http on loopback)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        try:
            check_fetch_url(newurl, "a redirect of a key fetch")
        except SystemExit as error:
            raise ValueError(str(error)) from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_SafeRedirects)


def _fetch_json(url: str, timeout: float) -> Any:
    """A small JSON document over HTTP(S); the URL's scheme was checked in settings."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with _opener.open(request, timeout=timeout) as response:
        body = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url} returned more than {MAX_DOCUMENT_BYTES} bytes")
    return json.loads(body)


class JwksKeys:
    """The issuer's signing keys by `kid`.

    A JWKS file is re-read when it changes. A remote JWKS (its URL, or the `jwks_uri` of the issuer's
    OIDC discovery document) is fetched on first use, refreshed once it is older than `max_age_seconds`,
    and refetched when a token names an unknown `kid`, at most once per `min_refetch_seconds` (so
    random `kid`s cannot make the gateway hammer the issuer). Concurrent misses share one fetch.
    """

    def __init__(
        self,
        *,
        jwks: str = "",
        issuer: str = "",
        min_refetch_seconds: float = 30.0,
        max_age_seconds: float = 600.0,
        fetch_timeout_seconds: float = 5.0,
    ) -> None:
        if not jwks and not issuer:
            raise ValueError("a JWKS source or an issuer for OIDC discovery is needed")
        self._jwks = jwks
        self._issuer = issuer
        self._remote = not jwks or jwks.startswith(("http://", "https://"))
        self._jwks_uri = jwks if self._remote else ""
        self._min_refetch = min_refetch_seconds
        self._max_age = max_age_seconds
        self._timeout = fetch_timeout_seconds
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None  # last successful fetch (monotonic)
        self._attempted_at = float("-inf")  # last fetch attempt, successful or not
        self._file_mtime: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0  # successful JWKS fetches (observability and tests)

    async def get(self, kid: str) -> SigningKey:
        if not self._remote:
            return self._from_file(kid)
        async with self._lock:
            now = time.monotonic()
            stale = self._fetched_at is None or now - self._fetched_at >= self._max_age
            unknown = kid not in self._keys
            if (stale or unknown) and now - self._attempted_at >= self._min_refetch:
                await self._refresh()
            elif stale and self._fetched_at is None:
                raise BackendUnavailable(
                    "the identity provider's keys are unavailable",
                    peer="identity-provider",
                    retry_after_seconds=max(0.0, self._attempted_at + self._min_refetch - now),
                )
            key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("token signed by an unknown key")
        return key

    def _from_file(self, kid: str) -> SigningKey:
        path = Path(self._jwks)
        try:
            mtime = path.stat().st_mtime
            if mtime != self._file_mtime:
                self._keys, self._file_mtime = parse_jwks(json.loads(path.read_text())), mtime
        except (OSError, ValueError) as error:
            log.error("cannot read the JWKS file %s: %s", path, error)
            if self._file_mtime is None:
                raise BackendUnavailable(
                    "the token signing keys are unavailable", peer="jwks-file"
                ) from None
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("token signed by an unknown key")
        return key

    async def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            self._keys = await asyncio.to_thread(self._fetch)
        except (OSError, ValueError) as error:  # URLError and JSON errors included
            log.warning("could not fetch the issuer's JWKS: %s", error)
            if self._fetched_at is None:
                raise BackendUnavailable(
                    "the identity provider's keys are unavailable",
                    peer="identity-provider",
                    retry_after_seconds=self._min_refetch,
                ) from None
            return  # keep the keys we have; the next refresh may succeed
        self._fetched_at = time.monotonic()
        self.fetch_count += 1

    def _fetch(self) -> dict[str, SigningKey]:
        if not self._jwks_uri:
            self._jwks_uri = self._discover()
        try:
            return parse_jwks(_fetch_json(self._jwks_uri, self._timeout))
        except (OSError, ValueError):
            if self._jwks:  # a configured URL: nothing to rediscover
                raise
            self._jwks_uri = ""  # the provider may have moved its keys: discover again next time
            raise

    def _discover(self) -> str:
        """The `jwks_uri` from the issuer's OIDC discovery document (OpenID Connect Discovery 1.0)."""
        document = _fetch_json(self._issuer.rstrip("/") + DISCOVERY_PATH, self._timeout)
        if not isinstance(document, dict):
            raise ValueError("the OIDC discovery document is not a JSON object")
        if document.get("issuer") != self._issuer:  # §4.3: it must be exactly the issuer we trust
            raise ValueError(
                f"the OIDC discovery document names issuer {document.get('issuer')!r}, "
                f"not {self._issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the OIDC discovery document has no jwks_uri")
        try:
            check_fetch_url(jwks_uri, "the discovered jwks_uri")
        except SystemExit as error:
            raise ValueError(str(error)) from None
        return jwks_uri


# How long a verified token is taken as verified without checking its signature again (never past
# its expiry, and only while its signing key is still the issuer's).
VERIFIED_TOKEN_SECONDS = 60.0
MAX_VERIFIED_TOKENS = 10_000


@dataclass(frozen=True)
class VerifiedToken:
    caller: Caller
    kid: str
    key: SigningKey  # the key that verified it: a token whose key left the JWKS is not trusted
    until: float


class VerifiedTokens:
    """Tokens this gateway verified, by their exact text, each until its expiry or for
    `VERIFIED_TOKEN_SECONDS`, whichever comes first (most recently used kept)."""

    def __init__(self, max_entries: int = MAX_VERIFIED_TOKENS) -> None:
        self._tokens: RecentlyUsed[str, VerifiedToken] = RecentlyUsed(max_entries)

    def get(self, token: str) -> VerifiedToken | None:
        verified = self._tokens.get(token)
        if verified is not None and time.time() >= verified.until:
            self._tokens.pop(token)
            return None
        return verified

    def put(self, token: str, verified: VerifiedToken) -> None:
        self._tokens.put(token, verified)


class JwtVerifier:
    """Verifies signature, algorithm, expiry, not-before, issuer and audience; returns the caller.
    A token verified once is not verified again while its key is the issuer's (`VerifiedTokens`)."""

    def __init__(
        self,
        keys: JwksKeys,
        *,
        issuer: str,
        audiences: tuple[str, ...] | list[str] | str,
        algorithms: tuple[str, ...] | list[str] = ("RS256",),
        leeway_seconds: float = 5.0,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audiences = [audiences] if isinstance(audiences, str) else list(audiences)
        self._algorithms = list(algorithms)
        self._leeway = leeway_seconds
        self._verified = VerifiedTokens()

    async def verify(self, token: str) -> Caller:
        known = self._verified.get(token)
        if known is not None and await self._keys.get(known.kid) is known.key:
            return known.caller
        verified = await self._verify_signed(token)
        self._verified.put(token, verified)
        return verified.caller

    async def _verify_signed(self, token: str) -> VerifiedToken:
        """A token whose signature and claims hold: its caller, key, and how long it is trusted."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise Unauthenticated("token algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("token names no signing key (kid)")
        key = await self._keys.get(kid)
        if key.algorithm and key.algorithm != algorithm:
            raise Unauthenticated("token algorithm does not match its signing key")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self._audiences,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not yet valid") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token issuer not trusted") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token audience not accepted") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthenticated("token rejected") from None
        until = min(float(claims["exp"]) + self._leeway, time.time() + VERIFIED_TOKEN_SECONDS)
        return VerifiedToken(Caller(subject=_subject(claims)), kid, key, until)


def _subject(claims: dict[str, Any]) -> str:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("token has no subject")
    return subject


class BearerAuthenticator(Authenticator):
    """`jwt` mode: every RPC except health and reflection needs a valid bearer token."""

    def __init__(self, verifier: JwtVerifier) -> None:
        self._verifier = verifier

    async def authenticate(self, method: str, metadata: dict[str, str]) -> None:
        caller_var.set(None)
        if _is_public_method(method):
            return
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("a bearer token is required", reason="TOKEN_MISSING")
        caller_var.set(await self._verifier.verify(token.strip()))


class ForwardedClaimsAuthenticator(Authenticator):
    """`envoy` mode: the caller is the `sub` of the payload Envoy verified and forwarded
    (`forward_payload_header`: base64url of the JSON payload). The Authorization header is ignored.

    Envoy already checked signature, expiry, issuer and audience; as defence in depth the issuer (when
    configured) and the expiry are checked again, which costs nothing.
    """

    def __init__(self, header: str, *, issuer: str = "", leeway_seconds: float = 5.0) -> None:
        self._header = header
        self._issuer = issuer
        self._leeway = leeway_seconds

    async def authenticate(self, method: str, metadata: dict[str, str]) -> None:
        caller_var.set(None)
        if _is_public_method(method):
            return
        encoded = metadata.get(self._header, "")
        if not encoded:
            raise Unauthenticated(
                "no verified claims: call through the identity proxy with a bearer token",
                reason="TOKEN_MISSING",
            )
        caller_var.set(self.caller_from(encoded))

    def caller_from(self, encoded: str) -> Caller:
        try:
            padded = encoded.strip() + "=" * (-len(encoded.strip()) % 4)
            claims = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        except (ValueError, UnicodeError, binascii.Error):
            raise Unauthenticated("malformed forwarded claims") from None
        if not isinstance(claims, dict):
            raise Unauthenticated("malformed forwarded claims")
        if self._issuer and claims.get("iss") != self._issuer:
            raise Unauthenticated("token issuer not trusted")
        expiry = claims.get("exp")
        if isinstance(expiry, int | float) and expiry + self._leeway < time.time():
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED")
        return Caller(subject=_subject(claims))


def make_authenticator(settings: AuthSettings) -> Authenticator:
    """The authenticator for the configured mode (settings are already checked)."""
    if settings.mode == "envoy":
        return ForwardedClaimsAuthenticator(
            settings.claims_header, issuer=settings.issuer, leeway_seconds=settings.leeway_seconds
        )
    keys = JwksKeys(
        jwks=settings.jwks,
        issuer=settings.issuer,
        min_refetch_seconds=settings.jwks_min_refetch_seconds,
        max_age_seconds=settings.jwks_max_age_seconds,
        fetch_timeout_seconds=settings.jwks_fetch_timeout_seconds,
    )
    return BearerAuthenticator(
        JwtVerifier(
            keys,
            issuer=settings.issuer,
            audiences=settings.audiences,
            algorithms=settings.algorithms,
            leeway_seconds=settings.leeway_seconds,
        )
    )
