"""Issue 12, finding 7: browser origins (WebSocket upgrades and CORS), on real gateways.

The attacker is a page on another site: its browser sends that site's ``Origin`` with the
upgrade (and with every cross-origin HTTP request); it may hold a valid token. Raw HTTP over
a socket, so that every header is exactly what a browser (or an attacker) would send.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from parley_contract import jsonutil
from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.idp import rs256_key_pair

from .conftest import token
from .rawhttp import exchange, request

# Production refuses HS256 (development only): the production gateway verifies RS256.
PRIVATE_KEY, PUBLIC_KEY = rs256_key_pair()
CHAT = "https://chat.example.com"


async def _raw(
    port: int, method: str, path: str, headers: list[tuple[str, str]]
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request; (status, headers (lower-case names), body)."""
    reply = await exchange(port, request(method, path, headers=headers))
    return reply.status, reply.headers, reply.body


async def _upgrade(port: int, origin: str | list[str] | None, tok: str) -> tuple[int, bytes]:
    headers = [
        ("Host", f"127.0.0.1:{port}"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
        ("Sec-WebSocket-Version", "13"),
    ]
    for o in [origin] if isinstance(origin, str) else origin or []:
        headers.append(("Origin", o))
    status, _, body = await _raw(port, "GET", f"/ws?access_token={tok}", headers)
    return status, body


def _refused(status: int, body: bytes) -> None:
    assert status == 403, (status, body)
    env = jsonutil.loads(body)
    assert env["success"] is False and env["error"]["code"] == "FORBIDDEN", env


@pytest.fixture
def dev_gateway(gateway_factory: Any) -> Any:
    return gateway_factory()


@pytest.fixture
def prod_gateway(gateway_factory: Any) -> Any:
    return gateway_factory(
        {
            "PARLEY_ENVIRONMENT": "production",
            "PARLEY_JWT_ALGORITHM": "RS256",
            "PARLEY_JWT_PUBLIC_KEY": PUBLIC_KEY,
            "PARLEY_GATEWAY_ALLOWED_ORIGINS": f"{CHAT}, https://admin.example.com:8443",
        }
    )


async def test_websocket_origins_in_development(dev_gateway: Any) -> None:
    port, tok = dev_gateway.port, token("alice")
    for allowed in (
        None,  # no Origin: not a browser
        f"http://127.0.0.1:{port}",  # the gateway's own page
        "http://localhost:5173",  # the Vite dev server
        "http://127.0.0.1:3000",
        "http://[::1]:8080",
    ):
        status, body = await _upgrade(port, allowed, tok)
        assert status == 101, (allowed, status, body)
    for hostile in (
        "https://evil.example",
        "null",  # sandboxed iframe, file:
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.example:5173",
        "http://evil.example@127.0.0.1:5173",  # userinfo is no origin
        "javascript://127.0.0.1",
        "",
        [f"http://127.0.0.1:{port}", "https://evil.example"],  # two Origin headers
    ):
        _refused(*await _upgrade(port, hostile, tok))
    # Refused before the token is looked at: a hostile page learns nothing about its token.
    _refused(*await _upgrade(port, "https://evil.example", "not-a-token"))


async def test_websocket_origins_in_production(prod_gateway: Any) -> None:
    port = prod_gateway.port
    tok = mint_token("alice", PrincipalKind.USER, private_key=PRIVATE_KEY, algorithm="RS256")
    for allowed in (
        None,
        CHAT,
        "https://CHAT.example.com:443",  # the same origin, spelled otherwise
        "https://admin.example.com:8443",
        f"http://127.0.0.1:{port}",  # same host and port as the request: its own page
    ):
        status, body = await _upgrade(port, allowed, tok)
        assert status == 101, (allowed, status, body)
    for hostile in (
        "http://localhost:5173",  # development only
        "http://chat.example.com:8080",
        "https://admin.example.com",  # listed with another port
        "https://evil.example",
    ):
        _refused(*await _upgrade(port, hostile, tok))


async def test_cors_of_the_http_api(dev_gateway: Any, prod_gateway: Any) -> None:
    port = dev_gateway.port
    path = "/v1/conversations?limit=1"
    auth = ("Authorization", f"Bearer {token('alice')}")
    host = ("Host", f"127.0.0.1:{port}")
    _, headers, _ = await _raw(port, "GET", path, [host, auth, ("Origin", "http://localhost:5173")])
    assert headers.get("access-control-allow-origin") == "http://localhost:5173", headers
    assert "access-control-allow-credentials" not in headers  # bearer tokens, no cookies
    # Another site: refused outright (not only hidden by the browser), the envelope says so.
    status, headers, body = await _raw(
        port, "GET", path, [host, auth, ("Origin", "https://evil.example")]
    )
    _refused(status, body)
    assert "access-control-allow-origin" not in headers, headers
    # socket.io: the polling handshake (a "simple" cross-site request) and the upgrade.
    sio = "/socket.io/?EIO=4&transport=polling"
    status, _, body = await _raw(port, "GET", sio, [host, ("Origin", "https://evil.example")])
    _refused(status, body)
    status, _, body = await _raw(port, "GET", sio, [host, ("Origin", "http://localhost:5173")])
    assert status != 403, (status, body)  # allowed: Engine.IO answers (its own checks)
    upgrade = [
        host,
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
        ("Sec-WebSocket-Version", "13"),
        ("Origin", "https://evil.example"),
    ]
    tok = token("alice")
    status, _, body = await _raw(
        port, "GET", f"/socket.io/?EIO=4&transport=websocket&token={tok}", upgrade
    )
    _refused(status, body)

    port = prod_gateway.port
    host = ("Host", f"127.0.0.1:{port}")
    for origin, allowed in ((CHAT, True), ("http://localhost:5173", False)):
        _, headers, _ = await _raw(port, "GET", "/healthz", [host, ("Origin", origin)])
        assert (headers.get("access-control-allow-origin") == origin) is allowed, headers


async def test_cors_preflight(dev_gateway: Any) -> None:
    port = dev_gateway.port
    ask = [
        ("Host", f"127.0.0.1:{port}"),
        ("Access-Control-Request-Method", "GET"),
        ("Access-Control-Request-Headers", "authorization"),
    ]
    status, headers, _ = await _raw(
        port, "OPTIONS", "/v1/conversations", [*ask, ("Origin", "http://localhost:5173")]
    )
    assert status == 200, (status, headers)
    assert headers.get("access-control-allow-origin") == "http://localhost:5173", headers
    assert "authorization" in headers.get("access-control-allow-headers", "").lower()
    status, headers, body = await _raw(
        port, "OPTIONS", "/v1/conversations", [*ask, ("Origin", "https://evil.example")]
    )
    _refused(status, body)
    assert "access-control-allow-origin" not in headers, headers
