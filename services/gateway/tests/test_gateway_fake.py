"""Gateway behaviour against a narrow fake conversation service on a real NATS server.

Two real gateway processes; the fake only answers commands/queries like the real service.
"""

from __future__ import annotations

import asyncio
from typing import Any

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.events import Event, PrincipalKind


async def test_connect_join_send_across_instances(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw1 = gateway_factory()
    gw2 = gateway_factory()
    alice = await clients(gw1.ws_url, "alice")
    bot = await clients(gw2.ws_url, "bot", PrincipalKind.AGENT)
    hello = alice.frames[0]
    assert hello["event"] == "connected"
    assert hello["data"]["principal"]["id"] == "alice"
    assert hello["data"]["limits"]["maxConversations"] == 100

    created = await alice.cmd("conversation:create", {"title": "t", "participants": ["bot"]})
    assert created["success"], created
    cid = created["data"]["_id"]
    for c in (alice, bot):
        r = await c.cmd("conversation:join", {"conversationId": cid})
        assert r["success"], r
        assert r["data"]["lastSeq"] == 0

    r = await alice.cmd("message:send", {"conversationId": cid, "content": "hi bot"})
    assert r["success"] and r["data"]["seq"] == 1
    got = await bot.wait_for(lambda f: f.get("event") == "message:new")
    assert got["data"]["content"] == "hi bot" and got["seq"] == 1
    r = await bot.cmd("message:send", {"conversationId": cid, "content": "hi alice"})
    await alice.wait_for(lambda f: f.get("event") == "message:new" and f["seq"] == 2)
    assert alice.seqs(cid) == [1, 2]

    # typing crosses instances, without seq
    r = await bot.cmd("typing:start", {"conversationId": cid})
    assert r["success"]
    t = await alice.wait_for(lambda f: f.get("event") == "typing:start")
    assert "seq" not in t and t["data"]["principalId"] == "bot"
    assert len(fake_conversation.events[cid]) == 2  # typing is never stored

    # late joiner with history
    carol = await clients(gw2.ws_url, "alice")
    r = await carol.cmd("conversation:join", {"conversationId": cid, "sinceSeq": 0})
    assert r["success"]
    assert carol.seqs(cid) == [1, 2]


async def test_gap_is_filled_from_the_store(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw = gateway_factory()
    alice = await clients(gw.ws_url, "alice")
    bob = await clients(gw.ws_url, "bob")
    cid = (await alice.cmd("conversation:create", {"participants": ["bob"]}))["data"]["_id"]
    await bob.cmd("conversation:join", {"conversationId": cid})
    fake_conversation.drop_publish = {2, 3}
    for i in range(5):
        r = await alice.cmd("message:send", {"conversationId": cid, "content": f"m{i}"})
        assert r["success"]
    await bob.wait_for(lambda f: f.get("seq") == 5)
    assert bob.seqs(cid) == [1, 2, 3, 4, 5]


async def test_durable_frames_are_ordered_by_their_headers(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    """The gateway orders durable frames by the seq in their NATS headers, without reading
    the body: these bodies carry no seq at all, and arrive in the wrong order."""
    gw = gateway_factory()
    alice = await clients(gw.ws_url, "alice")
    cid = (await alice.cmd("conversation:create", {"title": "h"}))["data"]["_id"]
    assert (await alice.cmd("conversation:join", {"conversationId": cid}))["success"]
    for seq in (2, 1):
        frame = envelopes.event_frame(Event.MESSAGE_NEW, {"content": f"m{seq}"})
        headers = subjects.durable_headers(cid, seq, 0, Event.MESSAGE_NEW.value)
        await fake_conversation.nc.publish(
            subjects.conversation_events(cid), jsonutil.dumps(frame), headers=headers
        )
    await alice.wait_for(lambda f: f.get("data", {}).get("content") == "m2")
    got = [f["data"]["content"] for f in alice.frames if f.get("event") == "message:new"]
    assert got == ["m1", "m2"]


async def test_bad_input(gateway_factory: Any, clients: Any, fake_conversation: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_COMMANDS_PER_SECOND": "5"})
    c = await clients(gw.ws_url, "alice")
    await c.send_raw("{not json")
    e = await c.wait_for(lambda f: f.get("event") == "error")
    assert e["error"]["code"] == "VALIDATION_ERROR"
    r = await c.cmd("nope:nope", {})
    assert r["error"]["code"] == "UNKNOWN_EVENT"
    await asyncio.sleep(0.5)
    codes = [
        (await c.cmd("typing:start", {"conversationId": "x"}))["error"]["code"] for _ in range(15)
    ]
    assert "RATE_LIMITED" in codes
    assert "FORBIDDEN" in codes


async def test_a_connection_pipelines_its_commands_in_order_per_conversation(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_COMMANDS_PER_SECOND": "1000"})
    alice = await clients(gw.ws_url, "alice")
    bob = await clients(gw.ws_url, "bob")
    cids = []
    for _ in range(2):
        cid = (await alice.cmd("conversation:create", {"participants": ["bob"]}))["data"]["_id"]
        assert (await bob.cmd("conversation:join", {"conversationId": cid}))["success"]
        cids.append(cid)
    # 50 sends fired without waiting for any reply, alternating between two conversations.
    for i in range(50):
        frame = {
            "event": "message:send",
            "id": f"s-{i}",
            "data": {"conversationId": cids[i % 2], "content": f"m{i}"},
        }
        await alice.send_raw(jsonutil.dumps(frame).decode())
    for i in range(50):
        await alice.wait_for(lambda f, i=i: f.get("id") == f"s-{i}" and "success" in f)
    replies = [f for f in alice.frames if str(f.get("id", "")).startswith("s-")]
    assert len(replies) == 50 and all(r["success"] for r in replies)
    assert sorted(r["id"] for r in replies) == sorted(f"s-{i}" for i in range(50))
    for k, cid in enumerate(cids):
        stored = [f["data"]["content"] for f in fake_conversation.events[cid]]
        assert stored == [f"m{i}" for i in range(k, 50, 2)]  # the sender's order
        by_id = {r["id"]: r["data"]["seq"] for r in replies if r["data"]["conversationId"] == cid}
        assert [by_id[f"s-{i}"] for i in range(k, 50, 2)] == list(range(1, 26))
    await bob.wait_for(lambda f: f.get("seq") == 25 and f.get("conversationId") == cids[1])
    assert bob.seqs(cids[0]) == list(range(1, 26))
    assert bob.seqs(cids[1]) == list(range(1, 26))
