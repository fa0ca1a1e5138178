"""JWT authentication (docs/protocol.md 1): HS256 in development, RS256 in production."""

from __future__ import annotations

import time
from typing import Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.ids import is_valid_id
from parley_contract.internal import Principal

DEV_JWT_SECRET = "parley-dev-secret-change-me-0123456789"  # refused outside development
_CLIENT_KINDS = {PrincipalKind.USER.value, PrincipalKind.AGENT.value}


class JwtConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    algorithm: Literal["HS256", "RS256"] = "HS256"
    secret: str | None = DEV_JWT_SECRET  # HS256
    public_key: str | None = None  # RS256, PEM
    audience: str | None = None
    issuer: str | None = None
    leeway_seconds: int = 5


def check_secret_for_environment(environment: str, cfg: JwtConfig) -> None:
    """Refuse the development secret (or no key) outside development."""
    if environment == "development":
        return
    if cfg.algorithm == "HS256" and (
        not cfg.secret or cfg.secret == DEV_JWT_SECRET or len(cfg.secret) < 32
    ):
        raise ValueError(
            "PARLEY_JWT_SECRET must be set to a strong secret (>= 32 chars, not the development "
            f"default) when PARLEY_ENVIRONMENT={environment!r}"
        )
    if cfg.algorithm == "RS256" and not cfg.public_key:
        raise ValueError("PARLEY_JWT_PUBLIC_KEY is required for RS256")


def verify_token(token: str, cfg: JwtConfig) -> tuple[Principal, float]:
    """The principal and expiry (epoch seconds) of a valid token.

    Raises ParleyError(UNAUTHORIZED) for a missing, bad or expired token.
    """
    key = cfg.secret if cfg.algorithm == "HS256" else cfg.public_key
    if not key:
        raise ParleyError(ErrorCode.UNAUTHORIZED, "server has no verification key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[cfg.algorithm],
            audience=cfg.audience,
            issuer=cfg.issuer,
            leeway=cfg.leeway_seconds,
            options={"require": ["sub", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise ParleyError(ErrorCode.UNAUTHORIZED, "token expired") from None
    except jwt.InvalidTokenError as exc:
        raise ParleyError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from None
    sub = claims.get("sub")
    kind = claims.get("kind", PrincipalKind.USER.value)
    if not isinstance(sub, str) or not is_valid_id(sub):
        raise ParleyError(ErrorCode.UNAUTHORIZED, "invalid token: sub must be a safe id")
    if kind not in _CLIENT_KINDS:
        raise ParleyError(ErrorCode.UNAUTHORIZED, "invalid token: kind must be 'user' or 'agent'")
    name = claims.get("name")
    principal = Principal(
        id=sub, kind=PrincipalKind(kind), name=name if isinstance(name, str) else None
    )
    return principal, float(claims["exp"])


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
