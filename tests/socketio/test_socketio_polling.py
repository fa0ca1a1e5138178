"""HTTP long-polling and the upgrade to WebSocket, behind a round-robin balancer (no sticky
sessions): every polling request may land on either gateway, and so may the upgrade.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from typing import Any

import pytest

from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.stack import Stack

from .conftest import Driver, RoundRobin

if importlib.util.find_spec("parley_gateway.front") is None:
    pytest.skip("long-polling needs POST: the gateway's HTTP front", allow_module_level=True)
from .test_socketio_recovery import _drop_and_recover, _setup


def tok(sub: str) -> str:
    return mint_token(sub, PrincipalKind.USER, name=sub.title())


async def _chat(driver: Driver, sock: str, peer: str, cid: str, n: int) -> None:
    """``peer`` sends n messages; ``sock`` gets each once, in order; ``sock`` answers once."""
    for i in range(n):
        r = await driver.emit(peer, "message:send", {"conversationId": cid, "content": f"m{i}"})
        assert r["success"] is True, r

    def got_all(_: dict[str, Any]) -> bool:
        return (
            len([f for f in driver.events(sock, "message:new") if f["conversationId"] == cid]) >= n
        )

    await driver.wait(got_all, 20)
    frames = [f for f in driver.events(sock, "message:new") if f["conversationId"] == cid]
    assert [f["data"]["content"] for f in frames] == [f"m{i}" for i in range(n)]
    r = await driver.emit(sock, "message:send", {"conversationId": cid, "content": "reply"})
    assert r["success"] is True, r
    await driver.wait(
        lambda m: (
            m.get("sock") == peer
            and m.get("event") == "message:new"
            and m["payload"]["data"]["content"] == "reply"
        )
    )


async def test_polling_only_client_alternating_gateways(
    sio_stack: Stack, driver: Driver, balancer: RoundRobin
) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    a = await driver.open("a", balancer.url, auth={"token": tok(alice)}, transports=["polling"])
    assert a["type"] == "connect" and a["transport"] == "polling", a
    b = await driver.open("b", sio_stack.gateway_url(1), auth={"token": tok(bob)})
    assert b["type"] == "connect", b
    r = await driver.emit("a", "conversation:create", {"title": "p", "participants": [bob]})
    assert r["success"] is True, r
    cid = r["data"]["_id"]
    for s in ("a", "b"):
        assert (await driver.emit(s, "conversation:join", {"conversationId": cid}))["success"]
    await _chat(driver, "a", "b", cid, 10)
    # typing both ways, errors as acks
    assert (await driver.emit("b", "typing:start", {"conversationId": cid}))["success"]
    await driver.wait(lambda m: m.get("sock") == "a" and m.get("event") == "typing:start")
    r = await driver.emit("a", "nope:nope", {})
    assert r["success"] is False and r["error"]["code"] == "UNKNOWN_EVENT"
    # the requests really went to both gateways, and the client never left polling
    assert {0, 1} <= set(balancer.picks)
    assert (await driver.state("a"))["transport"] == "polling"
    assert not driver.of("a", "disconnect")


async def test_upgrade_to_websocket_behind_round_robin(
    sio_stack: Stack, driver: Driver, balancer: RoundRobin
) -> None:
    """Default clients (polling, then upgrade): some upgrades land on the other gateway."""
    bob = f"bob-{uuid.uuid4().hex[:6]}"
    await driver.open("b", sio_stack.gateway_url(0), auth={"token": tok(bob)})
    users = [f"u{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
    r = await driver.emit("b", "conversation:create", {"title": "u", "participants": users})
    cid = r["data"]["_id"]
    assert (await driver.emit("b", "conversation:join", {"conversationId": cid}))["success"]
    for i, user in enumerate(users):
        sock = f"u{i}"
        c = await driver.open(sock, balancer.url, auth={"token": tok(user)})
        assert c["type"] == "connect", c
        opened = next(m for m in driver.of(sock) if m["type"] == "engine_open")
        assert opened["transport"] == "polling"
        r = await driver.emit(sock, "conversation:join", {"conversationId": cid})
        assert r["success"] is True, r
        await driver.wait_type(sock, "upgrade")
    for i in range(len(users)):
        assert (await driver.state(f"u{i}"))["transport"] == "websocket"
    for n in range(5):
        r = await driver.emit("b", "message:send", {"conversationId": cid, "content": f"m{n}"})
        assert r["success"] is True
    for i in range(len(users)):
        sock = f"u{i}"

        def got(_: dict[str, Any], s: str = sock) -> bool:
            return len(driver.events(s, "message:new")) >= 5

        await driver.wait(got, 20)
        assert [f["data"]["content"] for f in driver.events(sock, "message:new")][:5] == [
            f"m{n}" for n in range(5)
        ]
        r = await driver.emit(sock, "message:send", {"conversationId": cid, "content": sock})
        assert r["success"] is True, r
        assert not driver.of(sock, "disconnect"), driver.of(sock)


async def test_upgrade_lands_on_the_other_gateway(
    sio_stack: Stack, driver: Driver, balancer: RoundRobin
) -> None:
    """Polling on gateway 0 only, the WebSocket on gateway 1: the session moves there."""
    balancer.ports = [sio_stack.gateways[0].http_port]
    balancer.ws_port = sio_stack.gateways[1].http_port
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    await driver.open("b", sio_stack.gateway_url(0), auth={"token": tok(bob)})
    r = await driver.emit("b", "conversation:create", {"title": "m", "participants": [alice]})
    cid = r["data"]["_id"]
    assert (await driver.emit("b", "conversation:join", {"conversationId": cid}))["success"]
    # alice joins while still polling (slow upgrade: it waits for the join below)
    a = await driver.open("a", balancer.url, auth={"token": tok(alice)})
    assert a["type"] == "connect", a
    assert (await driver.emit("a", "conversation:join", {"conversationId": cid}))["success"]
    await driver.wait(lambda m: m.get("sock") == "a" and m["type"] == "upgrade")
    log = sio_stack.gateways[1].process.log_path.read_text()
    assert f"Engine.IO session {a['id']} moved here" in log
    await _chat(driver, "a", "b", cid, 5)
    assert not driver.of("a", "disconnect")
    joined = driver.events("a", "conversation:joined")
    assert len(joined) == 1  # the move is invisible: no second conversation:joined


async def test_polling_recovery_after_drop(
    sio_stack: Stack, driver: Driver, balancer: RoundRobin
) -> None:
    cid, _ = await _setup(sio_stack, driver, balancer, {"transports": ["polling"]})
    await _drop_and_recover(sio_stack, driver, balancer, cid, kill=None)


async def test_polling_recovery_after_gateway_kill(
    sio_stack: Stack, driver: Driver, balancer: RoundRobin
) -> None:
    cid, _ = await _setup(sio_stack, driver, balancer, {"transports": ["polling"]})
    # the session lives on the gateway that answered the handshake: find it from the sid
    state = driver.of("a", "connect")[-1]
    assert state["type"] == "connect"
    holder = await _holder(sio_stack, driver)
    try:
        await _drop_and_recover(sio_stack, driver, balancer, cid, kill=holder)
    finally:
        await asyncio.to_thread(sio_stack.restart, sio_stack.gateways[holder])


async def test_polling_recovery_after_gateway_drain(
    sio_stack: Stack, driver: Driver, balancer: RoundRobin
) -> None:
    cid, _ = await _setup(sio_stack, driver, balancer, {"transports": ["polling"]})
    holder = await _holder(sio_stack, driver)
    try:
        await _drop_and_recover(sio_stack, driver, balancer, cid, kill=holder, term=True)
    finally:
        await asyncio.to_thread(sio_stack.restart, sio_stack.gateways[holder])


async def _holder(stack: Stack, driver: Driver) -> int:
    hello = driver.events("a", "connected")[-1]
    instance = hello["data"]["instanceId"]
    return next(
        i for i, g in enumerate(stack.gateways) if g.env.get("PARLEY_INSTANCE_ID") == instance
    )
