"""Issue 13 points 4 and 7: agents are known, agent turns are resumable. Real processes: two
gateways, the conversation service, an agent bridge serving the demo agent, NATS, the store.

- the bridge publishes the agents it serves; GET /v1/agents lists them (and agents connected
  over WebSocket);
- creating or switching to an agent nobody serves is NOT_FOUND;
- an agent that goes away is visible: agent:offline, and a user message to it gets a stored
  notice instead of silence; the agent answers once it is back;
- a connection that joins during a turn, on either gateway, first gets where the turn is
  (its status; for a stream its start and ONE delta with all the text so far), then the
  live deltas, without gap or duplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley_contract import jsonutil
from parley_contract.events import PrincipalKind
from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack

from .conftest import http_get, token, uid


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    bridge_env = {
        "PARLEY_AGENT_BRIDGE_DRAIN_SECONDS": "2",
        "PARLEY_AGENT_BRIDGE_DEMO_DELAY": "0.1",  # ~6 s a turn: time to join mid-way
    }
    with module_stack(
        nats_server, store_server, servers_dir, "agents", agent_bridges=1, bridge_env=bridge_env
    ) as s:
        yield s


async def aget(url: str, tok: str) -> tuple[int, Any]:
    status, body, _ = await asyncio.to_thread(http_get, url, tok)
    return status, jsonutil.loads(body)


async def _agents(stack: Stack, who: str) -> dict[str, dict[str, Any]]:
    status, body = await aget(f"{stack.gateway_url(1)}/v1/agents", token(who))
    assert status == 200, body
    return {a["id"]: a for a in body["data"]["items"]}


async def test_agents_are_known(stack: Stack, clients: Any) -> None:
    ada = uid("ada")
    agents = await _agents(stack, ada)
    demo = agents["agent-demo"]
    assert demo["name"] == "Demo Agent" and demo["description"]
    assert demo["models"] == ["parley-demo-1"] and demo["online"] is True
    assert demo["servedBy"] == "bridge"
    # An external agent is known while it is connected.
    ext = uid("agent-ext")
    bot = await clients(stack.ws_url(0), ext, PrincipalKind.AGENT)
    for _ in range(50):
        if ext in await _agents(stack, ada):
            break
        await asyncio.sleep(0.1)
    assert (await _agents(stack, ada))[ext]["servedBy"] == "connection"

    a = await clients(stack.ws_url(0), ada)
    r = await a.cmd("conversation:create", {"title": "t", "agentId": "agent-nobody"})
    assert r["error"]["code"] == "NOT_FOUND" and r["error"]["details"]["field"] == "agentId", r
    r = await a.cmd("conversation:create", {"title": "t", "agentId": "agent-demo"})
    assert r["success"], r
    cid = r["data"]["_id"]
    r = await a.cmd("conversation:update", {"conversationId": cid, "agentId": "agent-nobody"})
    assert r["error"]["code"] == "NOT_FOUND", r
    r = await a.cmd("conversation:update", {"conversationId": cid, "agentId": ext})
    assert r["success"] and r["data"]["agentId"] == ext, r
    await bot.close()


async def test_an_agent_that_goes_away_is_visible(stack: Stack, clients: Any) -> None:
    ada = uid("ada")
    a = await clients(stack.ws_url(0), ada)
    r = await a.cmd("conversation:create", {"title": "t", "agentId": "agent-demo"})
    cid = r["data"]["_id"]
    assert (await a.cmd("conversation:join", {"conversationId": cid}))["success"]
    r = await a.cmd("message:send", {"conversationId": cid, "content": "hello"})
    assert r["success"], r

    def answer(f: dict[str, Any], after: int = 0) -> bool:
        d = f.get("data") or {}
        return (
            f.get("event") == "message:new"
            and f.get("seq", 0) > after
            and d.get("role") == "assistant"
            and d.get("messageType") == "text"
        )

    await a.wait_for(answer, timeout=30)
    bridge = stack.bridges[0]
    await asyncio.to_thread(bridge.process.stop)
    try:
        off = await a.wait_for(lambda f: f.get("event") == "agent:offline", timeout=15)
        assert off["data"]["agentId"] == "agent-demo" and off["conversationId"] == cid
        assert "agent-demo" not in await _agents(stack, ada)
        await asyncio.sleep(1.1)  # past the conversation service's 1 s cache of "served"
        r = await a.cmd("message:send", {"conversationId": cid, "content": "anyone?"})
        assert r["success"], r
        sent = r["data"]["seq"]
        notice = await a.wait_for(
            lambda f: (
                f.get("event") == "message:new"
                and f.get("seq", 0) > sent
                and (f.get("data") or {}).get("messageType") == "error"
            )
        )
        assert notice["data"]["role"] == "system" and "offline" in notice["data"]["content"]
        again = [f for f in a.events("agent:offline") if f["data"].get("reason") == "not-served"]
        assert again, "the ephemeral agent:offline of the unanswered message"
        r = await a.cmd("conversation:update", {"conversationId": cid, "title": "still mine"})
        assert r["success"], r  # the conversation itself is unaffected
    finally:
        await asyncio.to_thread(bridge.process.start)
        await asyncio.to_thread(stack.wait_ready, bridge)
    # Back: the queued turn is answered.
    await a.wait_for(lambda f: answer(f, sent), timeout=60)


def _deltas(c: Any, stream_id: str) -> list[dict[str, Any]]:
    return [
        f["data"] for f in c.events("message:stream-delta") if f["data"]["streamId"] == stream_id
    ]


async def test_joining_mid_turn_starts_from_where_the_turn_is(stack: Stack, clients: Any) -> None:
    ada = uid("ada")
    a = await clients(stack.ws_url(0), ada)
    r = await a.cmd("conversation:create", {"title": "t", "agentId": "agent-demo"})
    cid = r["data"]["_id"]
    assert (await a.cmd("conversation:join", {"conversationId": cid}))["success"]
    r = await a.cmd("message:send", {"conversationId": cid, "content": "tell me something"})
    assert r["success"], r
    user_msg = r["data"]["_id"]

    # Between the user's message and the first token: a joiner sees that a turn runs.
    await a.wait_for(lambda f: f.get("event") == "agent:thinking")
    assert not a.events("message:stream-start")
    early = await clients(stack.ws_url(1), ada)  # the other gateway: nothing subscribed there
    assert (await early.cmd("conversation:join", {"conversationId": cid}))["success"]
    status = early.events("agent:thinking", cid)
    assert status and status[0]["data"]["parentMessageId"] == user_msg, early.frames

    # Mid-stream, on both gateways (gw1 has a subscription now, gw0 too; a third client on
    # gw1 after the early one left, so that gw1 subscribes afresh and reads the KV state).
    await early.cmd("conversation:leave", {"conversationId": cid})
    start = await a.wait_for(lambda f: f.get("event") == "message:stream-start", timeout=30)
    stream_id = start["data"]["streamId"]
    await a.wait_for(
        lambda f: f.get("event") == "message:stream-delta" and f["data"]["index"] >= 5, timeout=30
    )
    late = [await clients(stack.ws_url(i), ada) for i in (1, 0)]
    for c in late:
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"]
    final = await a.wait_for(
        lambda f: (
            f.get("event") == "message:new"
            and f["data"].get("role") == "assistant"
            and f["data"].get("messageType") == "text"
        ),
        timeout=30,
    )
    content = final["data"]["content"]
    mine = _deltas(a, stream_id)
    assert [d["index"] for d in mine] == list(range(len(mine)))
    assert "".join(d["delta"] for d in mine) == content
    for c in late:
        await c.wait_for(lambda f: f.get("event") == "message:stream-end", timeout=30)
        turn = [
            f["event"]
            for f in c.frames
            if f.get("event", "").startswith(("agent:", "message:stream"))
            and f.get("event") != "agent:online"
        ]
        got = _deltas(c, stream_id)
        # First where the turn is: its status, the stream's start, ONE delta with all the
        # text so far.
        assert turn[:3] == ["agent:thinking", "message:stream-start", "message:stream-delta"]
        assert got[0]["snapshot"] is True and got[0]["index"] >= 5
        k = got[0]["index"]
        assert got[0]["delta"] == "".join(d["delta"] for d in mine[: k + 1])
        # Then the live deltas, from the next index on: no gap, no duplicate.
        assert [d["index"] for d in got[1:]] == list(range(k + 1, len(mine)))
        assert got[0]["delta"] + "".join(d["delta"] for d in got[1:]) == content
