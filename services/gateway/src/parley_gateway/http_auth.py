"""The bearer token of the HTTP API, one definition for every route module.

The OpenAPI document declares the scheme (``/docs`` has "Authorize"); a missing or non-bearer
``Authorization`` header is None here and ``UNAUTHORIZED`` in the protocol's envelope.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from parley_contract.auth import JwtConfig, verify_token_async
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.internal import Principal

BEARER = HTTPBearer(
    auto_error=False, bearerFormat="JWT", description="A Parley access token (docs/security.md)"
)
Auth = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


async def principal_of(
    authorization: HTTPAuthorizationCredentials | None, jwt_cfg: JwtConfig
) -> Principal:
    if authorization is None:
        raise ParleyError(ErrorCode.UNAUTHORIZED, "missing bearer token")
    principal, _ = await verify_token_async(authorization.credentials.strip(), jwt_cfg)
    return principal
