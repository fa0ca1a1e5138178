"""Issue 3 "done when": two real gateway processes, the real conversation service, one real
NATS (JetStream) and the real store, started by parley_devstack's Stack.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.events import Event, PrincipalKind
from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack, session_saved

from .conftest import http_get, token


async def aget(url: str, tok: str | None = None) -> tuple[int, bytes, Any]:
    return await asyncio.to_thread(http_get, url, tok)


GATEWAY_ENV = {
    "PARLEY_GATEWAY_SEND_QUEUE_LIMIT": "2097152",
    "PARLEY_GATEWAY_MAX_FRAME_BYTES": "65536",
    "PARLEY_GATEWAY_COMMANDS_PER_SECOND": "20",
}


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    with module_stack(nats_server, store_server, servers_dir, "gw", gateway_env=GATEWAY_ENV) as s:
        yield s


def ws(stack: Stack, i: int) -> str:
    return stack.ws_url(i)


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _create(client: Any, *participants: Any) -> str:
    r = await client.cmd("conversation:create", {"title": "t", "participants": list(participants)})
    assert r["success"], r
    cid: str = r["data"]["_id"]
    return cid


def _contiguous(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


async def test_user_and_agent_on_two_instances(stack: Stack, clients: Any) -> None:
    user, agent = _uid("alice"), _uid("helper")
    alice = await clients(ws(stack, 0), user)
    bot = await clients(ws(stack, 1), agent, PrincipalKind.AGENT)
    assert alice.frames[0]["data"]["instanceId"] != bot.frames[0]["data"]["instanceId"]
    cid = await _create(alice, {"id": agent, "kind": "agent"})
    for c in (alice, bot):
        r = await c.cmd("conversation:join", {"conversationId": cid})
        assert r["success"], r
        assert r["data"]["lastSeq"] >= 1  # conversation:created
        joined = c.events("conversation:joined", cid)
        assert joined and joined[0]["data"]["conversation"]["_id"] == cid

    for i in range(3):
        r = await alice.cmd("message:send", {"conversationId": cid, "content": f"q{i}"})
        assert r["success"], r
        assert r["data"]["role"] == "user" and r["data"]["messageStatus"] == "sent"
        r = await bot.cmd("message:send", {"conversationId": cid, "content": f"a{i}"})
        assert r["success"], r
        assert r["data"]["role"] == "assistant"
    last = r["data"]["seq"]
    for c in (alice, bot):
        await c.wait_for(lambda f, last=last: f.get("seq") == last)
        got = [f for f in c.events("message:new", cid)]
        assert [f["data"]["content"] for f in got] == ["q0", "a0", "q1", "a1", "q2", "a2"]
        assert _contiguous(c.seqs(cid))

    # typing crosses instances, has no seq and is never stored
    r = await bot.cmd("typing:start", {"conversationId": cid})
    assert r["success"]
    t = await alice.wait_for(lambda f: f.get("event") == "typing:start")
    assert "seq" not in t and t["data"]["principalId"] == agent and t["data"]["kind"] == "agent"
    await bot.cmd("typing:stop", {"conversationId": cid})
    await alice.wait_for(lambda f: f.get("event") == "typing:stop")
    status, body, _ = await aget(
        f"{stack.gateway_url(1)}/v1/conversations/{cid}/messages?limit=50", token(user)
    )
    assert status == 200, body
    items = jsonutil.loads(body)["data"]["items"]
    assert [m["content"] for m in items] == ["q0", "a0", "q1", "a1", "q2", "a2"]
    # presence of the other side reached each one
    assert any(f["data"]["principalId"] == agent for f in alice.events("agent:online", cid))

    # HTTP surface over the real service
    status, body, _ = await aget(f"{stack.gateway_url(0)}/v1/conversations?limit=5", token(user))
    assert status == 200 and jsonutil.loads(body)["data"]["items"][0]["_id"] == cid
    status, body, _ = await aget(f"{stack.gateway_url(0)}/v1/conversations/{cid}", token(user))
    assert status == 200 and jsonutil.loads(body)["data"]["_id"] == cid
    status, body, _ = await aget(
        f"{stack.gateway_url(0)}/v1/conversations/{cid}", token(_uid("eve"))
    )
    assert status == 403 and jsonutil.loads(body)["error"]["code"] == "FORBIDDEN"
    status, body, _ = await aget(f"{stack.gateway_url(1)}/v1/scaling", token(user))
    data = jsonutil.loads(body)["data"]
    assert data["instances"] >= 2 and data["users"] >= 1 and data["agents"] >= 1


async def test_late_joiner_gets_history(stack: Stack, clients: Any) -> None:
    user, friend = _uid("alice"), _uid("carol")
    alice = await clients(ws(stack, 0), user)
    cid = await _create(alice, friend)
    for i in range(4):
        assert (await alice.cmd("message:send", {"conversationId": cid, "content": f"m{i}"}))[
            "success"
        ]
    carol = await clients(ws(stack, 1), friend)
    r = await carol.cmd("conversation:join", {"conversationId": cid, "sinceSeq": 0})
    assert r["success"], r
    assert r["data"]["lastSeq"] == 5
    assert carol.seqs(cid) == [1, 2, 3, 4, 5]
    assert next(f["event"] for f in carol.events(cid=cid) if "seq" in f) == "conversation:created"
    assert [f["data"]["content"] for f in carol.events("message:new", cid)] == [
        "m0",
        "m1",
        "m2",
        "m3",
    ]
    # from the middle, then live
    other = await clients(ws(stack, 0), friend)
    r = await other.cmd("conversation:join", {"conversationId": cid, "sinceSeq": 3})
    assert other.seqs(cid) == [4, 5]
    await alice.cmd("message:send", {"conversationId": cid, "content": "live"})
    await other.wait_for(lambda f: f.get("seq") == 6)
    await carol.wait_for(lambda f: f.get("seq") == 6)
    assert other.seqs(cid) == [4, 5, 6] and carol.seqs(cid) == [1, 2, 3, 4, 5, 6]


async def test_killed_gateway_session_resumes_on_the_other(stack: Stack, clients: Any) -> None:
    user, agent = _uid("alice"), _uid("helper")
    alice = await clients(ws(stack, 0), user)
    bot = await clients(ws(stack, 1), agent, PrincipalKind.AGENT)
    cid = await _create(alice, {"id": agent, "kind": "agent"})
    cid2 = await _create(alice)
    for c, conv in ((alice, cid), (alice, cid2), (bot, cid)):
        assert (await c.cmd("conversation:join", {"conversationId": conv}))["success"]
    r = await bot.cmd("message:send", {"conversationId": cid, "content": "before"})
    await alice.wait_for(lambda f: f.get("seq") == r["data"]["seq"])
    before = alice.seqs(cid)
    session = alice.frames[0]["data"]["sessionId"]
    await session_saved(stack.nats_url, session, {cid: r["data"]["seq"], cid2: 0})

    stack.gateways[0].process.kill()  # SIGKILL: no drain, no goodbye
    await asyncio.wait_for(alice.closed.wait(), 10)
    missed = []
    for i in range(5):
        r = await bot.cmd("message:send", {"conversationId": cid, "content": f"missed{i}"})
        assert r["success"], r
        missed.append(r["data"]["seq"])

    again = await clients(ws(stack, 1), user, query=f"?session={session}")
    hello = again.frames[0]
    assert hello["event"] == "reconnected" and hello["data"]["sessionId"] == session
    assert {c["conversationId"] for c in hello["data"]["conversations"]} == {cid, cid2}
    await again.wait_for(lambda f: f.get("seq") == missed[-1])
    assert again.seqs(cid) == missed  # every missed one, in order, once
    assert not set(before) & set(again.seqs(cid))
    r = await bot.cmd("message:send", {"conversationId": cid, "content": "live"})
    await again.wait_for(lambda f: f.get("seq") == r["data"]["seq"])
    assert again.seqs(cid) == [*missed, r["data"]["seq"]]
    # the restored conversations are really joined again: typing is accepted
    assert (await again.cmd("typing:start", {"conversationId": cid2}))["success"]
    await asyncio.to_thread(stack.restart, stack.gateways[0])


async def test_slow_reader_is_cut_off_alone(stack: Stack, clients: Any) -> None:
    user, friend = _uid("alice"), _uid("bob")
    fast = await clients(ws(stack, 0), user)
    slow = await clients(ws(stack, 0), friend)
    other_instance = await clients(ws(stack, 1), friend)
    cid = await _create(fast, friend)
    for c in (fast, slow, other_instance):
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"]
    slow.ws.transport.pause_reading()
    nc = await nats.connect(stack.nats_url)
    try:
        n = 30  # 30 x 900 KB of stream deltas (ephemeral, like the agent bridge sends)
        for i in range(n):
            frame = envelopes.event_frame(
                Event.MESSAGE_STREAM_DELTA, {"i": i, "delta": "z" * 900_000}, conversation_id=cid
            )
            await nc.publish(subjects.conversation_events(cid), jsonutil.dumps(frame))
            await nc.flush()
            await asyncio.sleep(0.03)  # readers that read keep up; the paused one cannot
    finally:
        await nc.close()
    for c in (fast, other_instance):
        await c.wait_for(lambda f: f.get("data", {}).get("i") == n - 1, timeout=60)
        assert [f["data"]["i"] for f in c.events("message:stream-delta")] == list(range(n))
    slow.ws.transport.resume_reading()
    await asyncio.wait_for(slow.closed.wait(), 30)
    assert slow.ws.close_code == 1013
    r = await fast.cmd("message:send", {"conversationId": cid, "content": "after"})
    assert r["success"]
    await other_instance.wait_for(lambda f: f.get("seq") == r["data"]["seq"])
    # the slow one may resume
    again = await clients(
        ws(stack, 0), friend, query=f"?session={slow.frames[0]['data']['sessionId']}"
    )
    assert again.frames[0]["event"] == "reconnected"


async def test_every_bad_input_gets_its_answer(stack: Stack, clients: Any) -> None:
    user, stranger = _uid("alice"), _uid("mallory")
    alice = await clients(ws(stack, 0), user)
    bystander = await clients(ws(stack, 0), user)
    cid = await _create(alice)
    assert (await bystander.cmd("conversation:join", {"conversationId": cid}))["success"]
    c = await clients(ws(stack, 0), stranger)

    await c.send_raw("{oops")
    e = await c.wait_for(lambda f: f.get("event") == "error")
    assert e["success"] is False and e["error"]["code"] == "VALIDATION_ERROR"
    await c.send_raw('"just a string"')
    await c.wait_for(lambda f: "object" in f.get("error", {}).get("message", ""))
    r = await c.cmd("message:shout", {"conversationId": cid})
    assert r["error"]["code"] == "UNKNOWN_EVENT" and r["event"] == "message:shout"
    r = await c.cmd("message:send", {"content": "no conversation"})
    assert r["error"]["code"] == "VALIDATION_ERROR"
    assert r["error"]["details"]["field"] == "conversationId"
    r = await c.cmd("message:send", {"conversationId": cid, "content": ["not", "a", "string"]})
    assert r["error"]["code"] == "VALIDATION_ERROR" and r["error"]["details"]["field"] == "content"
    r = await c.cmd("conversation:join", {"conversationId": cid})
    assert r["error"]["code"] == "FORBIDDEN"
    r = await c.cmd("message:send", {"conversationId": cid, "content": "let me in"})
    assert r["error"]["code"] == "FORBIDDEN"
    r = await c.cmd("typing:start", {"conversationId": cid})
    assert r["error"]["code"] == "FORBIDDEN"
    r = await c.cmd("message:send", {"conversationId": cid, "content": "x" * 40_000})
    assert r["error"]["code"] == "PAYLOAD_TOO_LARGE"
    r = await alice.cmd(
        "message:send", {"conversationId": cid, "content": "hi", "role": "assistant"}
    )
    assert r["error"]["code"] == "FORBIDDEN"  # a role its principal lacks
    # a flood: the answers say RATE_LIMITED, the connection stays
    await c.send_raw(jsonutil.dumps({"event": "presence:online", "id": "warm"}).decode())
    await c.wait_for(lambda f: f.get("id") == "warm")
    for i in range(60):
        await c.send_raw(jsonutil.dumps({"event": "presence:online", "id": f"f{i}"}).decode())
    await c.wait_for(lambda f: f.get("id") == "f59")
    codes = {
        f["error"]["code"] for f in c.frames if f.get("id", "").startswith("f") and not f["success"]
    }
    assert codes == {"RATE_LIMITED"}
    await asyncio.sleep(1.0)
    assert (await c.cmd("presence:online", {}))["success"]  # survived

    # a frame over the limit: 1009, this connection only
    await c.send_raw("x" * 70_000)
    await asyncio.wait_for(c.closed.wait(), 10)
    assert c.ws.close_code == 1009
    # an expired token: 401 before the upgrade
    with pytest.raises(InvalidStatus) as exc:
        await connect(ws(stack, 1) + "?access_token=" + token(stranger, ttl_seconds=-30))
    assert exc.value.response.status_code == 401
    # the others noticed nothing
    r = await alice.cmd("message:send", {"conversationId": cid, "content": "fine"})
    assert r["success"]
    await bystander.wait_for(lambda f: f.get("seq") == r["data"]["seq"])
    assert not [f for f in bystander.frames if f.get("event") == "error"]


async def test_drain_on_sigterm(stack: Stack, clients: Any) -> None:
    user, friend = _uid("alice"), _uid("bob")
    alice = await clients(ws(stack, 1), user)
    bob = await clients(ws(stack, 0), friend)
    cid = await _create(alice, friend)
    for c in (alice, bob):
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"]
    session = alice.frames[0]["data"]["sessionId"]
    gw = stack.gateways[1]
    gw.process.signal(signal.SIGTERM)
    await asyncio.wait_for(alice.closed.wait(), 10)
    assert alice.ws.close_code == 1001
    sent = []
    for i in range(3):
        r = await bob.cmd("message:send", {"conversationId": cid, "content": f"d{i}"})
        sent.append(r["data"]["seq"])
    again = await clients(ws(stack, 0), user, query=f"?session={session}")
    assert again.frames[0]["event"] == "reconnected"
    await again.wait_for(lambda f: f.get("seq") == sent[-1])
    assert again.seqs(cid) == sent
    assert gw.process.proc is not None
    assert await asyncio.to_thread(gw.process.proc.wait, 15) == 0
    await asyncio.to_thread(stack.restart, gw)


async def test_invited_principal_is_notified_on_any_instance(stack: Stack, clients: Any) -> None:
    user, friend = _uid("alice"), _uid("bob")
    bob = await clients(ws(stack, 1), friend)
    alice = await clients(ws(stack, 0), user)
    cid = await _create(alice, friend)
    note = await bob.wait_for(
        lambda f: f.get("event") == "conversation:created" and f.get("conversationId") == cid
    )
    assert any(p.get("userId") == friend for p in note["data"]["participants"]), (
        note
    )  # bob learns about it without having joined anything
    r = await bob.cmd("conversation:join", {"conversationId": cid, "sinceSeq": 0})
    assert r["success"] and bob.seqs(cid)[-1] == 1
