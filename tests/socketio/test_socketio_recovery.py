"""Socket.IO connection state recovery across gateways (pid + offset → Parley session resume).

The client reconnects through a round-robin balancer, so it may come back on either gateway;
it must see ``socket.recovered === true`` and every missed durable event once, in order.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.stack import Stack
from parley_devstack.testing import session_saved

from .conftest import Driver, RoundRobin


def tok(sub: str) -> str:
    return mint_token(sub, PrincipalKind.USER, name=sub.title())


async def _setup(
    stack: Stack, driver: Driver, balancer: RoundRobin, opts: dict[str, Any]
) -> tuple[str, int]:
    """alice through the balancer, bob straight on the other gateway; both in one conversation."""
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    first = await driver.open("a", balancer.url, auth={"token": tok(alice)}, **opts)
    assert first["type"] == "connect", first
    hello = await driver.wait(lambda m: m.get("sock") == "a" and m.get("event") == "connected")
    instance = hello["payload"]["data"]["instanceId"]
    alice_gw = next(
        i for i, g in enumerate(stack.gateways) if g.env.get("PARLEY_INSTANCE_ID") == instance
    )
    other = 1 - alice_gw
    b = await driver.open(
        "b", stack.gateway_url(other), auth={"token": tok(bob)}, transports=["websocket"]
    )
    assert b["type"] == "connect", b
    r = await driver.emit("a", "conversation:create", {"title": "r", "participants": [bob]})
    cid: str = r["data"]["_id"]
    for s in ("a", "b"):
        assert (await driver.emit(s, "conversation:join", {"conversationId": cid}))["success"]
    for i in range(3):
        await driver.emit("b", "message:send", {"conversationId": cid, "content": f"before{i}"})
    await _wait_contents(driver, cid, [f"before{i}" for i in range(3)])
    return cid, alice_gw


def _alice_messages(driver: Driver, cid: str) -> list[dict[str, Any]]:
    return [f for f in driver.events("a", "message:new") if f.get("conversationId") == cid]


async def _wait_contents(driver: Driver, cid: str, want: list[str]) -> None:
    def done(_: dict[str, Any]) -> bool:
        return [f["data"]["content"] for f in _alice_messages(driver, cid)][-len(want) :] == want

    await driver.wait(done, 20)


async def _drop_and_recover(
    stack: Stack,
    driver: Driver,
    balancer: RoundRobin,
    cid: str,
    *,
    kill: int | None,
    term: bool = False,
) -> None:
    """Cut the client off (``kill`` None), kill -9 gateway ``kill``, or SIGTERM it (``term``:
    the gateway drains: it closes its clients and refuses new ones while it stops)."""
    connects = len(driver.of("a", "connect"))
    if kill is None:
        balancer.cut(block=True)
    elif term:
        stack.gateways[kill].process.signal(signal.SIGTERM)
    else:
        # What a kill -9 leaves: the session as the gateway last flushed it.
        session = driver.events("a", "connected")[-1]["data"]["sessionId"]
        delivered = _alice_messages(driver, cid)[-1]["seq"]
        await session_saved(stack.nats_url, session, {cid: delivered})
        stack.gateways[kill].process.kill()
    await driver.wait(lambda m: m.get("sock") == "a" and m["type"] == "disconnect")
    missed = []
    for i in range(5):
        r = await driver.emit("b", "message:send", {"conversationId": cid, "content": f"gap{i}"})
        assert r["success"], r
        missed.append(f"gap{i}")
    balancer.blocked = False
    await driver.wait(lambda _: len(driver.of("a", "connect")) > connects, 30)
    again = driver.of("a", "connect")[-1]
    assert again["recovered"] is True, again
    try:
        await _wait_contents(driver, cid, missed)
    except AssertionError as exc:
        logs = [
            line
            for g in stack.gateways
            for line in g.process.log_path.read_text().splitlines()
            if "recovery" in line or "moved here" in line or "ERROR" in line
        ]
        raise AssertionError(f"{exc}\ngateway logs:\n" + "\n".join(logs[-20:])) from None
    r = await driver.emit("a", "message:send", {"conversationId": cid, "content": "back"})
    assert r["success"], r
    await _wait_contents(driver, cid, [*missed, "back"])
    frames = _alice_messages(driver, cid)
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # once each, in order
    assert [f["data"]["content"] for f in frames] == [
        *(f"before{i}" for i in range(3)),
        *missed,
        "back",
    ]
    rec = [m for m in driver.events("a", "reconnected")]
    assert rec and rec[-1]["data"]["conversations"][0]["conversationId"] == cid


async def test_recovery_after_dropped_websocket(
    sio_stack: Stack, driver: Driver, balancer: RoundRobin
) -> None:
    cid, _ = await _setup(sio_stack, driver, balancer, {"transports": ["websocket"]})
    await _drop_and_recover(sio_stack, driver, balancer, cid, kill=None)


async def test_recovery_after_gateway_kill(
    sio_stack: Stack, driver: Driver, balancer: RoundRobin
) -> None:
    cid, alice_gw = await _setup(sio_stack, driver, balancer, {"transports": ["websocket"]})
    try:
        await _drop_and_recover(sio_stack, driver, balancer, cid, kill=alice_gw)
    finally:
        await asyncio.to_thread(sio_stack.restart, sio_stack.gateways[alice_gw])


async def test_recovery_after_gateway_drain(
    sio_stack: Stack, driver: Driver, balancer: RoundRobin
) -> None:
    """SIGTERM: the gateway closes its Socket.IO clients; they recover on the other one."""
    cid, alice_gw = await _setup(sio_stack, driver, balancer, {"transports": ["websocket"]})
    try:
        await _drop_and_recover(sio_stack, driver, balancer, cid, kill=alice_gw, term=True)
        reason = driver.of("a", "disconnect")[-1]["reason"]
        assert reason == "transport close", reason  # not "io server disconnect": it reconnects
    finally:
        await asyncio.to_thread(sio_stack.restart, sio_stack.gateways[alice_gw])
