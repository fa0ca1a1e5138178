"""Issue 12, finding 1: access follows membership live, on every gateway.

Two real gateway processes, the real conversation service, NATS and the store. Carol holds a
joined socket on each gateway; once she is removed (or the conversation is closed) both get
the ``conversation:updated`` that says so as their last frame of the conversation, then
nothing: no later message, no typing, and her own typing / presence no longer reach anyone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from parley_devstack.stack import Stack

from .conftest import uid


def _after(client: Any, index: int, cid: str) -> list[dict[str, Any]]:
    """The conversation's frames this client received after ``index`` (replies excluded)."""
    return [
        f
        for f in client.frames[index:]
        if "id" not in f and (f.get("conversationId") == cid or _data_cid(f) == cid)
    ]


def _data_pid(frame: dict[str, Any]) -> Any:
    data = frame.get("data")
    return data.get("principalId") if isinstance(data, dict) else None


def _data_cid(frame: dict[str, Any]) -> Any:
    data = frame.get("data")
    return data.get("conversationId") if isinstance(data, dict) else None


async def _room(stack: Stack, clients: Any) -> tuple[str, str, Any, Any, Any, Any]:
    """alice (owner, gateway 0), bob (gateway 1), carol on both gateways; all joined."""
    a, b, c = uid("alice"), uid("bob"), uid("carol")
    alice = await clients(stack.ws_url(0), a)
    bob = await clients(stack.ws_url(1), b)
    carol0 = await clients(stack.ws_url(0), c)
    carol1 = await clients(stack.ws_url(1), c)
    r = await alice.cmd("conversation:create", {"title": "t", "participants": [b, c]})
    assert r["success"], r
    cid: str = r["data"]["_id"]
    for cl in (alice, bob, carol0, carol1):
        r = await cl.cmd("conversation:join", {"conversationId": cid})
        assert r["success"], r
    # Before: carol's typing reaches bob (the refusal below is not a refusal of everything).
    assert (await carol1.cmd("typing:start", {"conversationId": cid}))["success"]
    # Everyone else has it before the test takes marks (the sender's own connection does
    # not get its typing back).
    for cl in (alice, bob, carol0):
        await cl.wait_for(
            lambda f: "id" not in f and f.get("event") == "typing:start" and _data_pid(f) == c
        )
    return cid, c, alice, bob, carol0, carol1


async def test_removed_participant_is_evicted_on_both_gateways(stack: Stack, clients: Any) -> None:
    cid, c, alice, bob, carol0, carol1 = await _room(stack, clients)
    marks = {id(x): len(x.frames) for x in (alice, bob, carol0, carol1)}

    r = await alice.cmd("conversation:update", {"conversationId": cid, "removeParticipants": [c]})
    assert r["success"], r
    removal_seq = r["data"]["lastSeq"]

    # Both of carol's sockets get the update that removes her ...
    for sock in (carol0, carol1):
        upd = await sock.wait_for(
            lambda f: f.get("event") == "conversation:updated" and f.get("seq") == removal_seq
        )
        mine = [p for p in upd["data"]["participants"] if p.get("userId") == c]
        assert mine and all(p.get("leftAt") for p in mine)

    # ... and nothing after it: messages and typing of the others stop reaching her.
    for i in range(3):
        r = await alice.cmd("message:send", {"conversationId": cid, "content": f"secret {i}"})
        assert r["success"], r
    last = r["data"]["seq"]
    assert (await bob.cmd("typing:start", {"conversationId": cid}))["success"]
    await bob.wait_for(lambda f: f.get("seq") == last)  # gateway 1 delivered everything
    await alice.wait_for(lambda f: f.get("seq") == last)  # gateway 0 too
    await alice.wait_for(
        lambda f: f.get("event") == "typing:start" and f["data"]["principalId"] != c
    )
    await asyncio.sleep(0.3)
    for sock in (carol0, carol1):
        seen = _after(sock, marks[id(sock)], cid)
        durable = [f for f in seen if "seq" in f]
        assert durable and durable[-1]["seq"] == removal_seq, durable
        assert not [f for f in seen if f.get("event") == "message:new"], seen
        assert not [f for f in seen if f.get("event") == "typing:start"], seen

    # Her own ephemeral commands are refused, on both gateways ...
    for sock in (carol0, carol1):
        r = await sock.cmd("typing:start", {"conversationId": cid})
        assert not r["success"] and r["error"]["code"] == "FORBIDDEN", r
        r = await sock.cmd("typing:stop", {"conversationId": cid})
        assert not r["success"] and r["error"]["code"] == "FORBIDDEN", r
        r = await sock.cmd("presence:online", {"status": "here"})
        assert r["success"] and r["data"]["conversations"] == 0, r
        # ... and so is joining again.
        r = await sock.cmd("conversation:join", {"conversationId": cid})
        assert not r["success"] and r["error"]["code"] == "FORBIDDEN", r
    # Nothing of hers reaches the members (a sync point: bob's own typing arrives after).
    assert (await alice.cmd("typing:stop", {"conversationId": cid}))["success"]
    await bob.wait_for(lambda f: f.get("event") == "typing:stop" and f["data"]["principalId"] != c)
    await asyncio.sleep(0.3)
    for member in (alice, bob):
        from_carol = [
            f
            for f in _after(member, marks[id(member)], cid)
            if isinstance(f.get("data"), dict)
            and f["data"].get("principalId") == c
            and f.get("event") != "presence:offline"
        ]
        assert not from_carol, from_carol


async def test_closing_ends_everyones_feed(stack: Stack, clients: Any) -> None:
    cid, _c, alice, bob, carol0, carol1 = await _room(stack, clients)
    r = await alice.cmd("conversation:update", {"conversationId": cid, "status": "closed"})
    assert r["success"], r
    closed_seq = r["data"]["lastSeq"]
    for sock in (alice, bob, carol0, carol1):
        upd = await sock.wait_for(lambda f: f.get("seq") == closed_seq)
        assert upd["event"] == "conversation:updated" and upd["data"]["status"] == "closed"
        r = await sock.cmd("typing:start", {"conversationId": cid})
        assert not r["success"] and r["error"]["code"] == "FORBIDDEN", r
    # The owner reopens it: the evicted sockets hear nothing until they join again.
    marks = {id(x): len(x.frames) for x in (alice, bob, carol0, carol1)}
    r = await alice.cmd("conversation:update", {"conversationId": cid, "status": "active"})
    assert r["success"], r
    reopened = r["data"]["lastSeq"]
    r = await bob.cmd("conversation:join", {"conversationId": cid, "sinceSeq": closed_seq})
    assert r["success"], r
    assert bob.seqs(cid)[-1] == reopened
    r = await bob.cmd("message:send", {"conversationId": cid, "content": "again"})
    assert r["success"], r
    await bob.wait_for(lambda f: f.get("seq") == r["data"]["seq"])
    await asyncio.sleep(0.3)
    for sock in (alice, carol0, carol1):
        assert not [f for f in _after(sock, marks[id(sock)], cid) if "seq" in f]


async def test_deleting_ends_everyones_feed_on_both_gateways(stack: Stack, clients: Any) -> None:
    cid, _c, alice, bob, carol0, carol1 = await _room(stack, clients)
    r = await alice.cmd("conversation:delete", {"conversationId": cid})
    assert r["success"], r
    marks: dict[int, int] = {}
    for sock in (alice, bob, carol0, carol1):
        gone = await sock.wait_for(
            lambda f: f.get("event") == "conversation:deleted" and "id" not in f
        )
        assert gone["conversationId"] == cid and isinstance(gone.get("seq"), int)
        marks[id(sock)] = sock.frames.index(gone) + 1
    # Nothing after it, and the conversation takes no ephemeral command any more.
    for sock in (alice, bob, carol0, carol1):
        r = await sock.cmd("typing:start", {"conversationId": cid})
        assert not r["success"] and r["error"]["code"] == "FORBIDDEN", r
    await asyncio.sleep(0.3)
    for sock in (alice, bob, carol0, carol1):
        # (the same conversation:deleted also comes as a notification to each participant)
        after = [
            f
            for f in _after(sock, marks[id(sock)], cid)
            if f.get("event") not in ("presence:offline", "conversation:deleted")
        ]
        assert not after, after
