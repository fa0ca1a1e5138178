"""The public port's front (front.py): HTTP beyond GET next to /ws, and hostile HTTP input.

Raw sockets against real gateway processes: what a client sees on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

from websockets.asyncio.client import connect

from parley_contract import jsonutil
from parley_contract.auth import DEV_JWT_SECRET, JwtConfig, verify_token
from parley_gateway.front import Front, WsRoute

from .conftest import token
from .rawhttp import UPGRADE, Raw, assert_envelope, request

HEAD_TIMEOUT = "1"
# No web UI: its catch-all mount would answer unknown paths (405 for non-GET, not 404).
NO_UI = {"PARLEY_GATEWAY_WEB_DIST": ""}
BODY_LIMIT = 4096


async def test_methods_bodies_keepalive_and_pipelining(gateway_factory: Any) -> None:
    gw = gateway_factory(NO_UI)
    conn = await Raw.open(gw.port)
    try:
        # POST with a JSON body, then more requests on the same connection (keep-alive)
        body = jsonutil.dumps({"sub": "usr_alice", "kind": "agent", "name": "Al"})
        await conn.send(
            request("POST", "/v1/dev/token", body, {"Content-Type": "application/json"})
        )
        r = await conn.reply()
        assert r.status == 200 and r.headers["server"] == "parley-gateway"
        principal, _ = verify_token(r.json()["data"]["token"], JwtConfig(secret=DEV_JWT_SECRET))
        assert (principal.id, principal.kind.value, principal.name) == ("usr_alice", "agent", "Al")

        await conn.send(
            request("POST", "/v1/dev/token", b"{not json", {"Content-Type": "application/json"})
        )
        assert_envelope(await conn.reply(), 422, "VALIDATION_ERROR")

        for method in ("PUT", "DELETE", "PATCH"):
            await conn.send(request(method, "/v1/scaling", b"{}"))
            doc = assert_envelope(await conn.reply(), 405, "VALIDATION_ERROR")
            allow = doc["error"]["details"]["allow"]
            assert "GET" in allow and method not in allow
        await conn.send(request("DELETE", "/v1/no/such/thing"))
        assert_envelope(await conn.reply(), 404, "NOT_FOUND")

        # HEAD: the GET's headers, no body (the next response starts right after the head)
        await conn.send(request("HEAD", "/healthz"))
        head = await conn.reply(head_only=True)
        assert head.status == 200 and int(head.headers["content-length"]) > 0
        await conn.send(request("GET", "/healthz"))
        r = await conn.reply()
        assert r.status == 200 and r.json()["status"] == "ok"
        assert int(head.headers["content-length"]) == len(r.body)

        # /ws without an upgrade: 426 envelope, as before
        await conn.send(request("GET", "/ws"))
        assert_envelope(await conn.reply(), 426, "VALIDATION_ERROR")
        # an upgrade to another path is plain HTTP (404 here), the connection goes on
        await conn.send(request("GET", "/v1/nope", headers=UPGRADE))
        assert_envelope(await conn.reply(), 404, "NOT_FOUND")

        # pipelining: three requests in one write, three answers in order
        await conn.send(
            request("GET", "/healthz")
            + request(
                "POST",
                "/v1/dev/token",
                jsonutil.dumps({"sub": "usr_bob"}),
                {"Content-Type": "application/json"},
            )
            + request("GET", "/readyz")
        )
        first, second, third = [await conn.reply() for _ in range(3)]
        assert first.json()["status"] == "ok"
        assert second.json()["success"] is True
        assert third.json()["status"] == "ready"
    finally:
        await conn.close()


async def test_upgrade_on_a_later_request_of_a_keepalive_connection(
    gateway_factory: Any,
) -> None:
    """What a proxy with pooled upstream connections sends (nginx ``keepalive``): the
    upgrade is not the connection's first request; websockets serves it all the same."""
    gw = gateway_factory()
    conn = await Raw.open(gw.port)
    await conn.send(request("GET", "/healthz"))
    assert (await conn.reply()).status == 200
    await conn.send(request("GET", "/ws", headers=UPGRADE))  # no token: websockets' 401
    r = await conn.reply()
    assert_envelope(r, 401, "UNAUTHORIZED")
    assert r.headers["connection"] == "close" and r.headers["server"] == "parley-gateway"
    assert await conn.closed_by_server()
    await conn.close()

    conn = await Raw.open(gw.port)
    await conn.send(request("GET", "/healthz") + request("GET", "/readyz"))
    assert (await conn.reply()).status == 200
    assert (await conn.reply()).status == 200
    await conn.send(request("GET", "/ws?access_token=" + token("alice"), headers=UPGRADE))
    switched = await conn.reply(head_only=True)
    assert switched.status == 101 and switched.headers["upgrade"] == "websocket"
    first = await asyncio.wait_for(conn.reader.read(4096), 10)  # an unmasked text frame
    assert first[0] == 0x81 and b'"event":"connected"' in first
    await conn.close()


async def test_streamed_body_and_the_body_limit(gateway_factory: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_MAX_BODY_BYTES": str(BODY_LIMIT)})
    # a chunked body within the limit is read
    conn = await Raw.open(gw.port)
    payload = jsonutil.dumps({"sub": "usr_carol", "name": "C" * 50})
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:10], payload[10:]))
    await conn.send(
        request(
            "POST",
            "/v1/dev/token",
            None,
            {"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        )
        + chunks
        + b"0\r\n\r\n"
    )
    r = await conn.reply()
    assert r.status == 200 and r.json()["success"] is True
    await conn.close()

    # declared too large: 413 envelope, connection closed (the rest is not read)
    conn = await Raw.open(gw.port)
    big = b"x" * (BODY_LIMIT + 1)
    await conn.send(request("POST", "/v1/dev/token", big, {"Content-Type": "application/json"}))
    doc = assert_envelope(await conn.reply(), 413, "PAYLOAD_TOO_LARGE")
    assert str(BODY_LIMIT) in doc["error"]["message"]
    assert await conn.closed_by_server()
    await conn.close()

    # too large in chunks (no Content-Length)
    conn = await Raw.open(gw.port)
    await conn.send(
        request(
            "POST",
            "/v1/dev/token",
            None,
            {"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        )
        + b"".join(b"400\r\n" + b"y" * 0x400 + b"\r\n" for _ in range(5))
    )
    assert_envelope(await conn.reply(), 413, "PAYLOAD_TOO_LARGE")
    assert await conn.closed_by_server()
    await conn.close()

    # too large for a path that never reads a body: still the envelope
    conn = await Raw.open(gw.port)
    await conn.send(request("PUT", "/v1/scaling", big))
    assert_envelope(await conn.reply(), 413, "PAYLOAD_TOO_LARGE")
    await conn.close()


async def test_hostile_heads(gateway_factory: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_HEAD_TIMEOUT_SECONDS": HEAD_TIMEOUT})

    # garbage: 400 envelope, closed
    conn = await Raw.open(gw.port)
    await conn.send(b"\x16\x03\x01\x02\x00garbage\x00\xff\r\n\r\n")
    assert_envelope(await conn.reply(), 400, "VALIDATION_ERROR")
    assert await conn.closed_by_server()
    await conn.close()

    # a head that never ends: 408 envelope once the head timeout is over, closed
    conn = await Raw.open(gw.port)
    started = time.monotonic()
    await conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for _ in range(3):  # slowloris: a byte now and then does not extend the deadline
        await asyncio.sleep(0.3)
        await conn.send(b"X")
    assert_envelope(await conn.reply(), 408, "TIMEOUT")
    assert time.monotonic() - started < 5
    assert await conn.closed_by_server()
    await conn.close()

    # the same on the second request of a keep-alive connection (uvicorn's side)
    conn = await Raw.open(gw.port)
    await conn.send(request("GET", "/healthz"))
    assert (await conn.reply()).status == 200
    await conn.send(b"GET /healthz HTTP/1.1\r\nHo")
    for _ in range(3):
        await asyncio.sleep(0.3)
        await conn.send(b"s")
    assert_envelope(await conn.reply(), 408, "TIMEOUT")
    assert await conn.closed_by_server()
    await conn.close()

    # a head larger than the limit: 431 envelope (first request), closed
    conn = await Raw.open(gw.port)
    with contextlib.suppress(ConnectionError):
        await conn.send(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n")
    assert_envelope(await conn.reply(), 431, "PAYLOAD_TOO_LARGE")
    await conn.close()

    # ...and on a later request: h11's bound, 400 envelope
    conn = await Raw.open(gw.port)
    await conn.send(request("GET", "/healthz"))
    assert (await conn.reply()).status == 200
    with contextlib.suppress(ConnectionError):
        await conn.send(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n")
    assert_envelope(await conn.reply(), 400, "VALIDATION_ERROR")
    await conn.close()

    # a connection that says nothing is closed after the head timeout, without a word
    conn = await Raw.open(gw.port)
    assert await conn.closed_by_server(timeout=5)
    await conn.close()

    # the port still serves; the refusals are counted, not logged one by one
    conn = await Raw.open(gw.port)
    await conn.send(request("GET", "/metrics"))
    metrics = (await conn.reply()).body.decode()
    await conn.close()
    for reason, count in (("bad_request", 2), ("head_timeout", 2), ("head_too_large", 1)):
        assert f'parley_gateway_http_refusals_total{{reason="{reason}"}} {count}.0' in metrics
    assert "Invalid HTTP request" not in gw.proc.log_path.read_text(errors="replace")


async def test_a_stalled_body_is_timed_out(gateway_factory: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_HEAD_TIMEOUT_SECONDS": HEAD_TIMEOUT})

    # a body that stops half-way: 408 envelope after the timeout, closed
    conn = await Raw.open(gw.port)
    head = request("POST", "/v1/dev/token", None, {"Content-Type": "application/json"})
    head = head[:-2] + b"Content-Length: 100\r\n\r\n"
    started = time.monotonic()
    await conn.send(head + b'{"sub": "usr_')
    doc = assert_envelope(await conn.reply(), 408, "TIMEOUT")
    assert "body" in doc["error"]["message"]
    assert time.monotonic() - started < 5
    assert await conn.closed_by_server()
    await conn.close()

    # a body that keeps coming, slower than the whole timeout but never stalling, is read
    conn = await Raw.open(gw.port)
    payload = jsonutil.dumps({"sub": "usr_slow", "name": "A slow sender"})
    await conn.send(head.replace(b"100", str(len(payload)).encode()))
    for i in range(0, len(payload), 4):
        await asyncio.sleep(0.3)  # 12 reads: 3.6 s in all, three times the timeout
        await conn.send(payload[i : i + 4])
    r = await conn.reply()
    assert r.status == 200 and r.json()["success"] is True
    await conn.close()

    # the port still serves and counts the refusal
    conn = await Raw.open(gw.port)
    await conn.send(request("GET", "/metrics"))
    metrics = (await conn.reply()).body.decode()
    await conn.close()
    assert 'parley_gateway_http_refusals_total{reason="body_timeout"} 1.0' in metrics


async def test_ws_upgrade_answers_are_unchanged(gateway_factory: Any, clients: Any) -> None:
    gw = gateway_factory()
    conn = await Raw.open(gw.port)
    await conn.send(request("GET", "/ws", headers=UPGRADE))
    r = await conn.reply()
    assert_envelope(r, 401, "UNAUTHORIZED")
    # websockets' handshake response, as before the front: no Date, Connection: close
    assert r.headers == {
        "content-type": "application/json",
        "content-length": str(len(r.body)),
        "connection": "close",
        "server": "parley-gateway",
    }
    assert await conn.closed_by_server()
    await conn.close()
    c = await clients(gw.ws_url, "alice")
    assert c.frames[0]["event"] == "connected"
    r2 = await c.cmd("presence:online", {})
    assert r2["success"] is True


async def test_sigterm_ends_http_and_ws_connections(gateway_factory: Any, clients: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_DRAIN_SECONDS": "0.5"})
    alice = await clients(gw.ws_url, "alice")
    idle = await Raw.open(gw.port)
    await idle.send(request("GET", "/healthz"))
    assert (await idle.reply()).status == 200
    pending = await Raw.open(gw.port)
    await pending.send(b"GET /heal")  # a head in progress
    gw.proc.signal(signal.SIGTERM)
    await asyncio.wait_for(alice.closed.wait(), 10)
    assert alice.ws.close_code == 1001
    assert await idle.closed_by_server()
    assert await pending.closed_by_server()
    assert await asyncio.to_thread(gw.proc.proc.wait, 15) == 0
    for c in (idle, pending):
        await c.close()
    with contextlib.suppress(OSError):
        async with connect(gw.ws_url + "?access_token=" + token("bob"), open_timeout=2):
            raise AssertionError("the port is still open")


async def test_sigterm_answers_a_pending_long_poll_then_closes(gateway_factory: Any) -> None:
    """An HTTP request in progress at SIGTERM (a Socket.IO long-poll) is answered, then its
    connection closes, and the process still exits 0."""
    gw = gateway_factory({"PARLEY_GATEWAY_DRAIN_SECONDS": "0.5"})
    conn = await Raw.open(gw.port)
    await conn.send(request("GET", "/socket.io/?EIO=4&transport=polling"))
    opened = await conn.reply()
    assert opened.status == 200 and opened.body.startswith(b"0"), opened.body
    sid = jsonutil.loads(opened.body[1:])["sid"]
    await conn.send(request("GET", f"/socket.io/?EIO=4&transport=polling&sid={sid}"))
    with contextlib.suppress(TimeoutError):  # nothing to say yet: the poll waits
        await conn.reply(timeout=0.5)
        raise AssertionError("the poll did not wait")
    started = time.monotonic()
    gw.proc.signal(signal.SIGTERM)
    answer = await conn.reply(timeout=15)
    assert answer.status == 200
    assert await conn.closed_by_server()
    assert await asyncio.to_thread(gw.proc.proc.wait, 15) == 0
    assert time.monotonic() - started < 12
    await conn.close()


def test_only_a_get_upgrade_to_a_registered_path_goes_to_websockets() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    async def handler(ws: Any) -> None:
        raise AssertionError("not called")

    route = WsRoute(handler)
    front = Front(app, {"/ws": route}, host="127.0.0.1", port=0)
    assert front.route_for(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket") is route
    assert front.route_for(b"GET /ws?access_token=t HTTP/1.1\nupgrade:WebSocket") is route
    assert front.route_for(b"GET /ws HTTP/1.1\r\nConnection: upgrade, keep-alive") is None
    assert front.route_for(b"POST /ws HTTP/1.1\r\nUpgrade: websocket") is None
    assert front.route_for(b"GET /ws/ HTTP/1.1\r\nUpgrade: websocket") is None
    assert front.route_for(b"GET /wss HTTP/1.1\r\nUpgrade: websocket") is None
    assert front.route_for(b"GET /ws HTTP/1.1\r\nX-Upgrade: websocket") is None
    assert front.route_for(b"GET  /ws HTTP/1.1\r\nUpgrade: websocket") is None  # h11 says 400
    assert front.route_for(b"\x16\x03\x01\x00\xff") is None  # TLS hello on a plain port
    assert front.route_for(b"") is None
