"""The gateway's own token checks (`jwt` mode) and its trust of Envoy's claims (`envoy` mode), against
real HTTP servers for OIDC discovery and JWKS."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from lomas_common.errors import BackendUnavailable, Unauthenticated
from lomas_gateway.auth import (
    BearerAuthenticator,
    ForwardedClaimsAuthenticator,
    JwksKeys,
    JwtVerifier,
    caller_var,
    make_authenticator,
)
from lomas_gateway.settings import AuthSettings


class Documents:
    """JSON documents served over HTTP on 127.0.0.1, with a count of requests per path."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.redirects: dict[str, str] = {}
        self.hits: dict[str, int] = {}
        documents = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                documents.hits[self.path] = documents.hits.get(self.path, 0) + 1
                if self.path in documents.redirects:
                    self.send_response(302)
                    self.send_header("Location", documents.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path not in documents.documents:
                    self.send_error(404)
                    return
                body = json.dumps(documents.documents[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Key:
    def __init__(self, alg: str | None = "RS256", use: str = "sig") -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:12]
        self.alg = alg
        self.use = use

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key())
        )
        jwk |= {"kid": self.kid, "use": self.use}
        if self.alg:
            jwk["alg"] = self.alg
        return jwk

    def token(self, issuer: str, *, alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": issuer, "aud": "lomas", "sub": "ada", "iat": now, "exp": now + 300}
        return jwt.encode(payload | claims, self.private, algorithm=alg, headers={"kid": self.kid})


ISSUER_PATH = "/realms/lomas"


@pytest.fixture
def idp() -> Iterator[Documents]:
    documents = Documents()
    issuer = documents.base + ISSUER_PATH
    documents.documents[ISSUER_PATH + "/.well-known/openid-configuration"] = {
        "issuer": issuer,
        "jwks_uri": issuer + "/certs",
    }
    try:
        yield documents
    finally:
        documents.close()


def publish(idp: Documents, *keys: Key) -> None:
    idp.documents[ISSUER_PATH + "/certs"] = {"keys": [k.jwk() for k in keys]}


def verifier(idp: Documents, **kwargs: Any) -> JwtVerifier:
    issuer = idp.base + ISSUER_PATH
    keys = JwksKeys(issuer=issuer, **kwargs)
    return JwtVerifier(keys, issuer=issuer, audiences=("lomas",), algorithms=("RS256", "RS384"))


def verify(v: JwtVerifier, token: str) -> str:
    return asyncio.run(v.verify(token)).subject


def refusal(v: JwtVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as refused:
        verify(v, token)
    return refused.value


def test_keys_come_from_oidc_discovery_and_are_cached(idp: Documents) -> None:
    key = Key()
    publish(idp, key)
    v = verifier(idp)
    issuer = idp.base + ISSUER_PATH
    assert verify(v, key.token(issuer)) == "ada"
    assert verify(v, key.token(issuer, sub="grace")) == "grace"
    assert idp.hits == {
        ISSUER_PATH + "/.well-known/openid-configuration": 1,
        ISSUER_PATH + "/certs": 1,
    }


def test_an_unknown_kid_refetches_once_per_interval(idp: Documents) -> None:
    old, new = Key(), Key()
    strangers = [Key() for _ in range(5)]  # made first: RSA keys take time on a busy machine
    publish(idp, old)
    v = verifier(idp, min_refetch_seconds=2.0)
    issuer = idp.base + ISSUER_PATH
    verify(v, old.token(issuer))
    publish(idp, old, new)
    # Within the interval, a new kid is not worth a fetch: refused, and the issuer is left alone.
    assert refusal(v, new.token(issuer)).message == "token signed by an unknown key"
    assert idp.hits[ISSUER_PATH + "/certs"] == 1
    time.sleep(2.1)
    assert verify(v, new.token(issuer)) == "ada"
    for stranger in strangers:
        refusal(v, stranger.token(issuer))
    assert idp.hits[ISSUER_PATH + "/certs"] == 2


def test_keys_age_out_so_a_retired_key_stops_verifying(idp: Documents) -> None:
    old, new = Key(), Key()
    publish(idp, old, new)
    v = verifier(idp, min_refetch_seconds=0.0, max_age_seconds=0.3)
    issuer = idp.base + ISSUER_PATH
    assert verify(v, old.token(issuer)) == "ada"
    publish(idp, new)
    time.sleep(0.4)
    assert refusal(v, old.token(issuer)).message == "token signed by an unknown key"
    assert verify(v, new.token(issuer)) == "ada"


def test_a_discovery_document_for_another_issuer_is_not_trusted(idp: Documents) -> None:
    key = Key()
    publish(idp, key)
    issuer = idp.base + ISSUER_PATH
    idp.documents[ISSUER_PATH + "/.well-known/openid-configuration"]["issuer"] = (
        "https://evil.example"
    )
    with pytest.raises(BackendUnavailable):
        verify(verifier(idp), key.token(issuer))


def test_a_discovered_jwks_uri_must_be_https_or_local(idp: Documents) -> None:
    key = Key()
    publish(idp, key)
    discovery = idp.documents[ISSUER_PATH + "/.well-known/openid-configuration"]
    discovery["jwks_uri"] = "http://keys.example.org/certs"
    with pytest.raises(BackendUnavailable):
        verify(verifier(idp), key.token(idp.base + ISSUER_PATH))


def test_key_fetches_follow_redirects_only_to_safe_places(idp: Documents) -> None:
    key = Key()
    publish(idp, key)
    issuer = idp.base + ISSUER_PATH
    idp.redirects["/moved"] = issuer + "/certs"  # on this machine: followed
    v = JwtVerifier(JwksKeys(jwks=idp.base + "/moved"), issuer=issuer, audiences="lomas")
    assert verify(v, key.token(issuer)) == "ada"
    # Plain HTTP to a host that is not loopback by name is refused, though this one would answer.
    unsafe = idp.base.replace("127.0.0.1", "0.0.0.0") + ISSUER_PATH + "/certs"
    idp.redirects["/downgraded"] = unsafe
    v = JwtVerifier(JwksKeys(jwks=idp.base + "/downgraded"), issuer=issuer, audiences="lomas")
    fetches = idp.hits[ISSUER_PATH + "/certs"]
    with pytest.raises(BackendUnavailable):
        verify(v, key.token(issuer))
    assert idp.hits[ISSUER_PATH + "/certs"] == fetches


def test_an_unreachable_provider_is_unavailable_not_a_bad_token() -> None:
    idp = Documents()
    idp.close()  # nothing listens there any more
    keys = JwksKeys(issuer=idp.base + ISSUER_PATH, fetch_timeout_seconds=1.0)
    v = JwtVerifier(keys, issuer=idp.base + ISSUER_PATH, audiences="lomas")
    with pytest.raises(BackendUnavailable) as unavailable:
        verify(v, Key().token(idp.base + ISSUER_PATH))
    assert unavailable.value.reason == "BACKEND_UNAVAILABLE"


def test_the_token_algorithm_must_match_its_published_key(idp: Documents) -> None:
    key = Key(alg="RS384")
    publish(idp, key)
    issuer = idp.base + ISSUER_PATH
    v = verifier(idp)
    assert verify(v, key.token(issuer, alg="RS384")) == "ada"
    assert "does not match" in refusal(v, key.token(issuer, alg="RS256")).message


def test_encryption_keys_are_not_signing_keys(idp: Documents) -> None:
    key = Key(use="enc")
    publish(idp, key)
    assert "unknown key" in refusal(verifier(idp), key.token(idp.base + ISSUER_PATH)).message


def test_each_claim_is_checked(idp: Documents) -> None:
    key = Key()
    publish(idp, key)
    issuer = idp.base + ISSUER_PATH
    v = verifier(idp)
    now = int(time.time())
    cases = {
        key.token(issuer, exp=now - 60, iat=now - 120): ("TOKEN_EXPIRED", "token expired"),
        key.token(issuer, nbf=now + 60): ("TOKEN_INVALID", "token not yet valid"),
        key.token("https://other.example"): ("TOKEN_INVALID", "token issuer not trusted"),
        key.token(issuer, aud="other"): ("TOKEN_INVALID", "token audience not accepted"),
        key.token(issuer, sub=""): ("TOKEN_INVALID", "token has no subject"),
        jwt.encode({"sub": "x"}, "s" * 32, algorithm="HS256", headers={"kid": key.kid}): (
            "TOKEN_INVALID",
            "token algorithm not allowed",
        ),
        jwt.encode({"sub": "x"}, key.private, algorithm="RS256"): (
            "TOKEN_INVALID",
            "token names no signing key (kid)",
        ),
    }
    for token, (reason, message) in cases.items():
        error = refusal(v, token)
        assert (error.reason, error.message) == (reason, message)


def test_a_jwks_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    old, new = Key(), Key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [old.jwk()]}))
    v = JwtVerifier(JwksKeys(jwks=str(path)), issuer="dev", audiences="lomas")
    assert verify(v, old.token("dev")) == "ada"
    path.write_text(json.dumps({"keys": [new.jwk()]}))
    future = time.time() + 5
    os.utime(path, (future, future))
    assert verify(v, new.token("dev")) == "ada"
    assert "unknown key" in refusal(v, old.token("dev")).message


def authenticate(authenticator: Any, metadata: dict[str, str], method: str = "/x.Y/Z") -> str:
    async def run() -> str:
        await authenticator.authenticate(method, metadata)
        caller = caller_var.get()
        return caller.subject if caller else ""

    return asyncio.run(run())


def payload(claims: Any, *, pad: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()
    return encoded if pad else encoded.rstrip("=")


def test_envoy_mode_trusts_the_forwarded_claims_and_ignores_authorization() -> None:
    auth = make_authenticator(AuthSettings(mode="envoy", issuer="https://idp"))
    assert isinstance(auth, ForwardedClaimsAuthenticator)
    header = "x-lomas-jwt-payload"
    claims = {"iss": "https://idp", "sub": "ada", "exp": time.time() + 60}
    assert authenticate(auth, {header: payload(claims)}) == "ada"
    assert authenticate(auth, {header: payload(claims | {"sub": "grace"}, pad=True)}) == "grace"
    # A bearer token alone proves nothing in envoy mode, valid or not.
    with pytest.raises(Unauthenticated) as missing:
        authenticate(auth, {"authorization": f"Bearer {Key().token('https://idp')}"})
    assert missing.value.reason == "TOKEN_MISSING"
    refused = {
        "%%%": "malformed forwarded claims",
        payload({"iss": "https://other", "sub": "ada"}): "token issuer not trusted",
        payload({"iss": "https://idp", "sub": ""}): "token has no subject",
        payload(["ada"]): "malformed forwarded claims",
        payload({"iss": "https://idp", "sub": "ada", "exp": time.time() - 60}): "token expired",
    }
    for value, message in refused.items():
        with pytest.raises(Unauthenticated) as error:
            authenticate(auth, {header: value})
        assert error.value.message == message
    assert authenticate(auth, {}, method="/grpc.health.v1.Health/Check") == ""


def test_jwt_mode_builds_a_bearer_authenticator(tmp_path: Path) -> None:
    key = Key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.jwk()]}))
    auth = make_authenticator(AuthSettings(issuer="dev", jwks=str(path)))
    assert isinstance(auth, BearerAuthenticator)
    assert authenticate(auth, {"authorization": f"Bearer {key.token('dev')}"}) == "ada"
    with pytest.raises(Unauthenticated) as missing:
        authenticate(auth, {"x-lomas-jwt-payload": payload({"iss": "dev", "sub": "ada"})})
    assert missing.value.reason == "TOKEN_MISSING"


def test_a_verified_token_is_trusted_without_a_new_signature_check_until_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.jwk()]}))
    v = JwtVerifier(JwksKeys(jwks=str(path)), issuer="dev", audiences="lomas", leeway_seconds=0)
    decoded: list[str] = []
    real_decode = jwt.decode

    def counted_decode(token: str, **options: Any) -> Any:
        decoded.append(token)
        return real_decode(token, **options)

    monkeypatch.setattr(jwt, "decode", counted_decode)
    expiry = int(time.time()) + 2
    token = key.token("dev", exp=expiry)
    assert [verify(v, token) for _ in range(3)] == ["ada"] * 3
    assert len(decoded) == 1
    time.sleep(max(0.0, expiry - time.time()) + 0.1)
    assert refusal(v, token).message == "token expired"
