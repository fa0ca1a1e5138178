"""GET /v1/dev/token: a development sign-in for the web UI, absent outside development."""

from __future__ import annotations

import time
from typing import Any

import httpx

from parley_contract import jsonutil
from parley_contract.auth import verify_token
from parley_contract.events import PrincipalKind
from parley_devstack.idp import rs256_key_pair
from parley_gateway.http_api import create_app
from parley_gateway.hub import Hub
from parley_gateway.metrics import Metrics
from parley_gateway.settings import Settings


async def _get(settings: Settings, path: str) -> tuple[int, Any]:
    app = create_app(Hub(settings, Metrics()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        resp = await client.get(path)
    return resp.status_code, jsonutil.loads(resp.content)


async def test_dev_token_in_development() -> None:
    settings = Settings(environment="development", web_dist=None)
    status, body = await _get(settings, "/v1/dev/token?sub=user-3&kind=agent&name=Bot%20Three")
    assert status == 200, body
    assert body["success"] is True and "timestamp" in body
    principal, exp = verify_token(body["data"]["token"], settings.jwt_config())
    assert (principal.id, principal.kind, principal.name) == (
        "user-3",
        PrincipalKind.AGENT,
        "Bot Three",
    )
    assert 0 < exp - time.time() <= 12 * 3600 + 5

    status, body = await _get(settings, "/v1/dev/token?sub=user-4")
    assert status == 200
    principal, _ = verify_token(body["data"]["token"], settings.jwt_config())
    assert principal.kind is PrincipalKind.USER and principal.name is None

    for bad in ("/v1/dev/token", "/v1/dev/token?sub=a.b", "/v1/dev/token?sub=x%20y"):
        status, body = await _get(settings, bad)
        assert status == 422, bad
        assert body["error"]["code"] == "VALIDATION_ERROR" and body["error"]["details"] == {
            "field": "sub"
        }
    status, body = await _get(settings, "/v1/dev/token?sub=u1&kind=service")
    assert status == 422 and body["error"]["details"] == {"field": "kind"}


async def test_no_dev_token_outside_development() -> None:
    settings = Settings(
        environment="production",
        jwt_algorithm="RS256",
        jwt_public_key=rs256_key_pair()[1],
        web_dist=None,
    )
    settings.check()
    status, body = await _get(settings, "/v1/dev/token?sub=user-3")
    assert status == 404
    assert body["success"] is False and body["error"]["code"] == "NOT_FOUND"
    assert "token" not in str(body.get("data"))
    status, body = await _get(settings, "/openapi.json")
    assert "/v1/dev/token" not in body["paths"]
