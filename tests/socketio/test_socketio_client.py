"""Issue 14: an unmodified socket.io-client app against two real Parley gateways.

Every test drives the real npm ``socket.io-client`` (tests/socketio/driver.mjs) the way the
seed's apps use it: ``io(url, {auth: {token}})``, ``emit(event, data, ack)``,
``on(event, handler)``.
"""

from __future__ import annotations

import uuid
from typing import Any

from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_contract.limits import MAX_CONTENT_CHARS
from parley_devstack.stack import Stack

from .conftest import Driver

WS = {"transports": ["websocket"]}


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def tok(sub: str, kind: PrincipalKind = PrincipalKind.USER) -> str:
    return mint_token(sub, kind, name=sub.title())


def url(stack: Stack, i: int) -> str:
    return stack.gateway_url(i)


async def _create(d: Driver, sock: str, *participants: Any) -> str:
    r = await d.emit(
        sock, "conversation:create", {"title": "t", "participants": list(participants)}
    )
    assert r["success"] is True, r
    cid: str = r["data"]["_id"]
    return cid


async def test_connect_with_token_and_refused_without(sio_stack: Stack, driver: Driver) -> None:
    user = _uid("alice")
    ok = await driver.open("a", url(sio_stack, 0), auth={"token": tok(user)}, **WS)
    assert ok["type"] == "connect" and ok["recovered"] is False
    hello = await driver.wait(lambda m: m.get("sock") == "a" and m.get("event") == "connected")
    assert hello["payload"]["data"]["principal"]["id"] == user

    no = await driver.open("b", url(sio_stack, 0), **WS)
    assert no["type"] == "connect_error"
    assert no["data"]["code"] == "UNAUTHORIZED", no

    bad = await driver.open("c", url(sio_stack, 1), auth={"token": "not-a-jwt"}, **WS)
    assert bad["type"] == "connect_error" and bad["data"]["code"] == "UNAUTHORIZED", bad

    # The Authorization header of the handshake works too (extraHeaders, Node client).
    hdr = await driver.open(
        "d", url(sio_stack, 1), extraHeaders={"Authorization": f"Bearer {tok(user)}"}, **WS
    )
    assert hdr["type"] == "connect", hdr
    # and access_token in the query
    q = await driver.open("e", url(sio_stack, 0), query={"access_token": tok(user)}, **WS)
    assert q["type"] == "connect", q


async def test_other_namespace_refused(sio_stack: Stack, driver: Driver) -> None:
    r = await driver.open("n", url(sio_stack, 0) + "/admin", auth={"token": tok(_uid("u"))}, **WS)
    assert r["type"] == "connect_error"
    assert r["message"] == "Invalid namespace"
    assert r["data"]["code"] == "NOT_FOUND" and "/admin" in r["data"]["message"]


async def test_create_join_send_live_across_gateways(sio_stack: Stack, driver: Driver) -> None:
    alice, bob = _uid("alice"), _uid("bob")
    assert (await driver.open("a", url(sio_stack, 0), auth={"token": tok(alice)}, **WS))[
        "type"
    ] == "connect"
    assert (await driver.open("b", url(sio_stack, 1), auth={"token": tok(bob)}, **WS))[
        "type"
    ] == "connect"
    cid = await _create(driver, "a", {"id": bob, "kind": "user"})
    for s in ("a", "b"):
        r = await driver.emit(s, "conversation:join", {"conversationId": cid})
        assert r["success"] is True and r["data"]["lastSeq"] >= 0, r
        assert set(r) == {"success", "data", "timestamp"}
    sent = await driver.emit("a", "message:send", {"conversationId": cid, "content": "hi bob"})
    assert sent["success"] is True and sent["data"]["content"] == "hi bob"
    got = await driver.wait(
        lambda m: (
            m.get("sock") == "b"
            and m.get("event") == "message:new"
            and m["payload"]["data"]["content"] == "hi bob"
        )
    )
    frame = got["payload"]
    assert frame["conversationId"] == cid and frame["seq"] == sent["data"]["seq"]
    assert frame["success"] is True and "timestamp" in frame
    # the recovery offset rides as the event's last argument (socket.io's convention)
    assert got["extra"] == [f"{cid}:{frame['seq']}"]

    # typing reaches the other gateway's socket, not as a durable event
    assert (await driver.emit("b", "typing:start", {"conversationId": cid}))["success"] is True
    typing = await driver.wait(lambda m: m.get("sock") == "a" and m.get("event") == "typing:start")
    assert typing["payload"]["data"]["principalId"] == bob and "seq" not in typing["payload"]
    assert typing["extra"] == []


async def test_errors_come_back_as_acks(sio_stack: Stack, driver: Driver) -> None:
    alice, eve = _uid("alice"), _uid("eve")
    await driver.open("a", url(sio_stack, 0), auth={"token": tok(alice)}, **WS)
    await driver.open("e", url(sio_stack, 1), auth={"token": tok(eve)}, **WS)
    cid = await _create(driver, "a")

    r = await driver.emit("a", "no:such:event", {})
    assert r["success"] is False and r["error"]["code"] == "UNKNOWN_EVENT", r
    r = await driver.emit("a", "message:send", {"conversationId": cid})
    assert r["success"] is False and r["error"]["code"] == "VALIDATION_ERROR", r
    r = await driver.emit("a", "message:send", "not an object")
    assert r["success"] is False and r["error"]["code"] == "VALIDATION_ERROR", r
    r = await driver.emit("a", "message:send", args=[{"conversationId": cid}, "extra"])
    assert r["success"] is False and r["error"]["code"] == "VALIDATION_ERROR", r
    r = await driver.emit("e", "conversation:join", {"conversationId": cid})
    assert r["success"] is False and r["error"]["code"] == "FORBIDDEN", r
    big = "x" * (MAX_CONTENT_CHARS + 1)  # the contract's limit, checked by the service
    r = await driver.emit("a", "message:send", {"conversationId": cid, "content": big})
    assert r["success"] is False and r["error"]["code"] == "PAYLOAD_TOO_LARGE", r

    # binary packets are refused through the ack; the attachment does not upset the socket
    r = await driver.emit("a", "message:send", args=[{"$buffer": "00ff"}])
    assert r["success"] is False and r["error"]["code"] == "VALIDATION_ERROR", r
    assert "binary" in r["error"]["message"]
    # Without an ack, a failure arrives as an `error` event (as on /ws).
    driver.send({"op": "emit", "sock": "a", "event": "no:such:event", "data": {}})
    err = await driver.wait(lambda m: m.get("sock") == "a" and m.get("event") == "error")
    assert err["payload"]["error"]["code"] == "UNKNOWN_EVENT"
    # and the socket still works
    r = await driver.emit("a", "message:send", {"conversationId": cid, "content": "still here"})
    assert r["success"] is True, r


async def test_rate_limit_applies(sio_stack: Stack, driver: Driver) -> None:
    await driver.open("a", url(sio_stack, 0), auth={"token": tok(_uid("alice"))}, **WS)
    codes = []
    for _ in range(60):
        driver.send(
            {"op": "emit", "sock": "a", "event": "presence:online", "data": {}, "req": _ + 1000}
        )
    for i in range(60):
        req = i + 1000

        def is_ack(m: dict[str, Any], req: int = req) -> bool:
            return m.get("type") == "ack" and m["req"] == req

        ack = await driver.wait(is_ack)
        codes.append(ack["args"][0].get("error", {}).get("code"))
    assert "RATE_LIMITED" in codes
