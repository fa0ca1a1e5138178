"""A test identity provider: serves a JWKS on a free local port and signs tokens with its
current key (ES256 by default; RS256 / EdDSA too). ``rotate()`` publishes a new key with a
new ``kid``, as a real provider does; ``fetches`` counts how often the key set was read."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _new_key(algorithm: str) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {algorithm!r}")


def _public_jwk(key: PrivateKey, algorithm: str, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": algorithm}


class TestIdentityProvider:
    """Start with ``start()`` (or as a context manager); ``jwks_url`` is then set."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, issuer: str = "https://idp.test/", audience: str = "parley", algorithm: str = "ES256"
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithm = algorithm
        self.fetches = 0
        self._keys: list[tuple[str, PrivateKey]] = []
        self._server: ThreadingHTTPServer | None = None
        self.rotate(keep_old=False)

    @property
    def kid(self) -> str:
        return self._keys[-1][0]

    def rotate(self, *, keep_old: bool = True) -> str:
        """A new signing key with a new kid; the old one stays published unless not kept."""
        kid = f"k-{uuid.uuid4().hex[:12]}"
        entry = (kid, _new_key(self.algorithm))
        self._keys = [*self._keys, entry] if keep_old else [entry]
        return kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(key, self.algorithm, kid) for kid, key in self._keys]}

    def token(self, sub: str = "alice", *, ttl: int = 300, **claims: Any) -> str:
        """A token of the current key; claims override the defaults (``aud=None`` drops one)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        kid, key = self._keys[-1]
        return jwt.encode(body, key, algorithm=self.algorithm, headers={"kid": kid})

    @property
    def jwks_url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def start(self) -> TestIdentityProvider:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                idp.fetches += 1
                body = json.dumps(idp.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> TestIdentityProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rs256_key_pair() -> tuple[str, str]:
    """(private PEM, public PEM) of a fresh RSA key: a production-mode gateway in tests
    verifies RS256 tokens with the public one (HS256 is for development only)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public
