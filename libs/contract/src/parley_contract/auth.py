"""JWT authentication (docs/protocol.md 1): HS256 in development; RS256 with one PEM key, or
RS256/ES256/EdDSA against an identity provider's JWKS URL (docs/security.md "Identity
providers")."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import re
import time
from typing import Any, Literal

import jwt
import jwt.utils
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS
from pydantic import BaseModel, ConfigDict

from parley_contract.claims import KindRule, map_principal
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.jwks import jwks_keys

DEV_JWT_SECRET = "parley-dev-secret-change-me-0123456789"  # refused outside development
# What an identity provider's keys may sign with (never HS256: a JWKS is public).
JWKS_ALGORITHMS = ("RS256", "ES256", "EdDSA")


class JwtConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    algorithm: Literal["HS256", "RS256"] = "HS256"
    secret: str | None = DEV_JWT_SECRET  # HS256
    public_key: str | None = None  # RS256, PEM
    audience: str | None = None
    issuer: str | None = None
    leeway_seconds: int = 5
    # An identity provider: its keys from this URL (algorithm/secret/public_key are unused).
    jwks_url: str | None = None
    jwks_lifespan_seconds: float = 300.0
    jwks_min_refresh_seconds: float = 30.0
    jwks_timeout_seconds: float = 5.0
    id_claim: str = "sub"
    name_claim: str = "name"
    kind_rules: tuple[KindRule, ...] = ()


def check_secret_for_environment(environment: str, cfg: JwtConfig) -> None:
    """Outside development: HS256 (a shared secret) is refused, RS256 needs its public key,
    a JWKS URL needs issuer, audience and https."""
    if cfg.jwks_url:
        if not cfg.issuer or not cfg.audience:
            raise ValueError(
                "PARLEY_JWT_ISSUER and PARLEY_JWT_AUDIENCE are required with PARLEY_JWT_JWKS_URL"
            )
        if environment != "development" and not cfg.jwks_url.startswith("https://"):
            raise ValueError(
                f"PARLEY_JWT_JWKS_URL must be https:// when PARLEY_ENVIRONMENT={environment!r}"
            )
        return
    if environment == "development":
        return
    if cfg.algorithm == "HS256":
        # A shared secret: whoever verifies tokens can also mint them for anyone (issue 18).
        raise ValueError(
            "PARLEY_JWT_ALGORITHM=HS256 (a shared secret) is for development only; with "
            f"PARLEY_ENVIRONMENT={environment!r} use an identity provider (PARLEY_JWT_JWKS_URL, "
            "PARLEY_JWT_ISSUER, PARLEY_JWT_AUDIENCE) or RS256 with PARLEY_JWT_PUBLIC_KEY "
            "(docs/security.md, 'Identity providers')"
        )
    if cfg.algorithm == "RS256" and not cfg.public_key:
        raise ValueError("PARLEY_JWT_PUBLIC_KEY is required for RS256")
    if cfg.algorithm == "RS256" and cfg.public_key:
        try:
            serialization.load_pem_public_key(cfg.public_key.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("PARLEY_JWT_PUBLIC_KEY is not a PEM public key") from None


@functools.lru_cache(maxsize=4)
def _public_key(pem: str | None) -> Any:
    """The RS256 public key, loaded once: PyJWT would parse the PEM for every token (about
    40 % of an RS256 verification)."""
    if not pem:
        return None
    try:
        return serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return pem  # PyJWT reports it for each token, as before


class _CheckedHMAC(HMACAlgorithm):
    """PyJWT's HS256 for one secret whose key checks already ran (``_hmac_key``)."""

    def __init__(self, checked: bytes) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self.checked = checked
        # PyJWT asks for every token (a SHA-256 object each time for its digest size).
        self.checked_length = super().check_key_length(checked)

    def prepare_key(self, key: str | bytes) -> bytes:
        if key == self.checked:  # our own secret, never token input
            return self.checked
        return super().prepare_key(key)

    def check_key_length(self, key: bytes) -> str | None:
        if key is self.checked:
            return self.checked_length
        return super().check_key_length(key)

    def sign(self, msg: bytes, key: bytes) -> bytes:
        # The same HMAC-SHA256 as PyJWT's ``hmac.new(...).digest()``, in one call (no HMAC
        # object per token); ``verify`` still compares with ``hmac.compare_digest``.
        return hmac.digest(key, msg, "sha256")


@functools.lru_cache(maxsize=4)
def _hmac_key(secret: str | None) -> Any:
    """The HS256 secret as a key whose checks ran once: PyJWT checks a secret for every
    token (it must not load as DER, as an x509 certificate or as JSON: three parse
    attempts that raise), ~40 % of an HS256 verification. Anything PyJWT refuses stays the
    plain secret, refused for each token as before."""
    if not secret:
        return secret
    try:
        key = jwt.PyJWK(
            {"kty": "oct", "k": jwt.utils.base64url_encode(secret.encode()).decode()},
            algorithm="HS256",
        )
        key.Algorithm = _CheckedHMAC(key.Algorithm.prepare_key(key.key))
    except jwt.PyJWTError:
        return secret
    return key


_BASE64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_BASE64URL_INDEX = {c: i for i, c in enumerate(_BASE64URL_ALPHABET)}
# Bits of the last character that encode nothing, by the segment's length modulo 4.
_UNUSED_BITS = {2: 0x0F, 3: 0x03}


class _JWS(PyJWS):
    """PyJWT's JWS with its segment check done by ``bytes.translate``: PyJWT 2.15 tests each
    byte of the token against the base64url alphabet in a generator expression, ~40 % of an
    HS256 verification. The same checks in the same order, the same errors
    (``test_auth_segments.py`` compares both on valid and hostile segments)."""

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if padding > 2:
            raise jwt.DecodeError(f"Invalid {name} padding")
        if padding and len(segment) % 4 != 0:
            raise jwt.DecodeError(f"Invalid {name} padding")
        rest = len(stripped) % 4
        if rest == 1 or stripped.translate(None, _BASE64URL_ALPHABET):
            raise jwt.DecodeError(f"Invalid {name} padding")
        # PyJWT encodes the decoded bytes again and compares: the same as the last
        # character's unused low bits being zero (the canonical encoding).
        if rest and _BASE64URL_INDEX[stripped[-1]] & _UNUSED_BITS[rest]:
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            return base64.urlsafe_b64decode(stripped + b"=" * (-rest % 4))
        except (TypeError, binascii.Error) as err:  # pragma: no cover - checked above
            raise jwt.DecodeError(f"Invalid {name} padding") from err


# A run of 20 digits: a number orjson may not read exactly (it reads integers beyond 64 bits
# as floats); such a payload is read by the stdlib's json, as PyJWT does.
_LONG_NUMBER = re.compile(rb"[0-9]{20}")


class _JWT(jwt.PyJWT):
    """PyJWT with the claims (the payload, parsed after the signature was verified) read by
    orjson instead of the stdlib's ``json``: ~1 against 3.6 µs of a ~20 µs verification.
    PyJWT's own hook for it (``_decode_payload``: "intended to be overridden by
    subclasses"), the same claims and refusals; orjson is stricter (no NaN/Infinity, no
    UTF-16, no lone surrogate, no float out of range): such a payload is an invalid token
    here (it is not RFC 8259 JSON). ``test_auth_segments.py`` compares both."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        data = decoded["payload"]
        if _LONG_NUMBER.search(data):
            return super()._decode_payload(decoded)
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise jwt.DecodeError(f"Invalid payload string: {e}") from e
        if not isinstance(payload, dict):
            raise jwt.DecodeError("Invalid payload string: must be a json object")
        return payload


_jwt = _JWT()
_jwt._jws = _JWS(options=_jwt._get_sig_options())


def verify_token(token: str, cfg: JwtConfig) -> tuple[Principal, float]:
    """The principal and expiry (epoch seconds) of a valid token.

    Raises ParleyError(UNAUTHORIZED) for a missing, bad or expired token, one of another
    issuer or audience, or one that maps to no principal. With a JWKS URL this may block on
    a fetch: on an event loop use ``verify_token_async``.
    """
    key: Any
    if cfg.jwks_url:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise ParleyError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from None
        keys = jwks_keys(
            cfg.jwks_url,
            lifespan=cfg.jwks_lifespan_seconds,
            cooldown=cfg.jwks_min_refresh_seconds,
            timeout=cfg.jwks_timeout_seconds,
        )
        key, algorithms = keys.signing_key(kid), list(JWKS_ALGORITHMS)
    else:
        key = _hmac_key(cfg.secret) if cfg.algorithm == "HS256" else _public_key(cfg.public_key)
        algorithms = [cfg.algorithm]
    if not key:
        raise ParleyError(ErrorCode.UNAUTHORIZED, "server has no verification key")
    required = ["exp"] + (["iss", "aud"] if cfg.jwks_url else [])
    try:
        claims: dict[str, Any] = _jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=cfg.audience,
            issuer=cfg.issuer,
            leeway=cfg.leeway_seconds,
            options={"require": required},
        )
    except jwt.ExpiredSignatureError:
        raise ParleyError(ErrorCode.UNAUTHORIZED, "token expired") from None
    except jwt.ImmatureSignatureError:
        raise ParleyError(ErrorCode.UNAUTHORIZED, "token not yet valid (nbf/iat)") from None
    except jwt.InvalidAudienceError:
        raise ParleyError(ErrorCode.UNAUTHORIZED, "token for another audience (aud)") from None
    except jwt.InvalidIssuerError:
        raise ParleyError(ErrorCode.UNAUTHORIZED, "token from another issuer (iss)") from None
    except jwt.InvalidTokenError as exc:
        raise ParleyError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from None
    principal = map_principal(
        claims,
        id_claim=cfg.id_claim,
        name_claim=cfg.name_claim,
        kind_rules=cfg.kind_rules,
        strict=cfg.jwks_url is not None,
    )
    return principal, float(claims["exp"])


async def verify_token_async(token: str, cfg: JwtConfig) -> tuple[Principal, float]:
    """``verify_token`` without blocking the event loop: a JWKS lookup (which may fetch the key
    set) runs in a worker thread; a static key is checked in place."""
    if cfg.jwks_url:
        return await asyncio.to_thread(verify_token, token, cfg)
    return verify_token(token, cfg)


def mint_token(
    sub: str,
    kind: PrincipalKind = PrincipalKind.USER,
    *,
    name: str | None = None,
    ttl_seconds: int = 24 * 3600,
    secret: str = DEV_JWT_SECRET,
    private_key: str | None = None,
    algorithm: Literal["HS256", "RS256"] = "HS256",
) -> str:
    """A token for development and tests (``parley token``)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "kind": kind.value, "iat": now, "exp": now + ttl_seconds}
    if name:
        claims["name"] = name
    key = private_key if algorithm == "RS256" else secret
    assert key is not None
    return jwt.encode(claims, key, algorithm=algorithm)
