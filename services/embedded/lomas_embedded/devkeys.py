"""The embedded default's development issuer: a local RSA key, its JWKS, and tokens signed with it.

Only the embedded launcher and tests use it; other deployments trust a real OIDC provider's JWKS.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEV_ISSUER = "https://lomas-mesh.local/dev-issuer"
DEV_AUDIENCE = "lomas"


@dataclass(frozen=True)
class DevIssuer:
    private_key: rsa.RSAPrivateKey
    kid: str
    jwks_path: Path
    issuer: str = DEV_ISSUER
    audience: str = DEV_AUDIENCE

    @classmethod
    def load_or_create(cls, directory: Path) -> DevIssuer:
        """Reuse the key in `directory` if there is one, so tokens survive restarts."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / "dev-issuer-key.pem"
        if key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            key_path.chmod(0o600)
        public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        kid = jwt.utils.base64url_encode(
            hashlib.sha256(json.dumps(public_jwk, sort_keys=True).encode()).digest()[:12]
        ).decode()
        jwks_path = directory / "jwks.json"
        jwks_path.write_text(
            json.dumps({"keys": [{**public_jwk, "kid": kid, "use": "sig", "alg": "RS256"}]})
        )
        return cls(private_key=key, kid=kid, jwks_path=jwks_path)

    def token(self, subject: str, *, ttl_seconds: int = 30 * 24 * 3600, **claims: object) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(payload, self.private_key, algorithm="RS256", headers={"kid": self.kid})
