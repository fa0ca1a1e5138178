"""Presence across a resume (docs/protocol.md 3.5, Presence; issue 16, the reconnect storm).

A member whose connection went away without anyone being told (its gateway was killed, or the
connection is still open and gets kicked by the resume) was never offline for the others: its
resume announces nothing, and the kicked connection announces nothing either. A member the
others were told went offline (it closed; or its crashed gateway's clients were reaped) is
announced online again when it resumes. Real gateways and NATS; the conversation service is
the narrow stand-in of conftest.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.js.errors

from parley_contract import subjects
from parley_contract.routes import REJOIN_SUBJECT
from parley_devstack.testing import session_saved

from .conftest import GatewayProc, joined_conversation, presence_frames, uid

ENV = {"PARLEY_GATEWAY_PRESENCE_TTL_SECONDS": "3"}  # heartbeats every second


def _session(client: Any) -> str:
    return str(client.frames[0]["data"]["sessionId"])


async def _setup(
    gateway_factory: Any, clients: Any, fake_conversation: Any, *extra: str
) -> tuple[Any, ...]:
    """alice (and ``extra``) on gw1, bob on gw2, all joined to one conversation; gw1's
    sessions saved, and gw2 has listed gw1's heartbeat (the reaper's view of it)."""
    gw1, gw2 = gateway_factory(ENV), gateway_factory(ENV)
    started = time.monotonic()  # gw2 is ready
    alice_id, bob_id = uid("alice"), uid("bob")
    alice = await clients(gw1.ws_url, alice_id)
    cid = await joined_conversation(alice, bob_id, *extra)
    bob = await clients(gw2.ws_url, bob_id)
    assert (await bob.cmd("conversation:join", {"conversationId": cid}))["success"]
    others = []
    for pid in extra:
        c = await clients(gw1.ws_url, pid)
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"]
        others.append(c)
    for c in (alice, *others):  # what a kill -9 of gw1 leaves for a resume (and the reaper)
        await session_saved(fake_conversation.nats_url, _session(c), {cid: 0})
    # gw2 lists the instances every second (ENV): at least once before gw1 goes.
    await asyncio.sleep(max(0.0, started + 2.0 - time.monotonic()))
    return gw1, gw2, alice, alice_id, bob, bob_id, cid, others


async def _resume(clients: Any, gw: GatewayProc, pid: str, session: str, cid: str) -> Any:
    back = await clients(gw.ws_url, pid, query=f"?session={session}")
    assert back.frames[0]["event"] == "reconnected"
    return back


async def _joined(client: Any, cid: str) -> None:
    await client.wait_for(
        lambda f: f.get("event") == "conversation:joined" and f.get("conversationId") == cid
    )


async def _typing_seen(sender: Any, receiver: Any, sender_id: str, cid: str) -> None:
    """A fence: ``sender``'s typing reached ``receiver`` (after what its gateway published
    before it, on the same conversation subject)."""
    assert (await sender.cmd("typing:start", {"conversationId": cid}))["success"]
    await receiver.wait_for(
        lambda f: f.get("event") == "typing:start" and f["data"]["principalId"] == sender_id
    )


async def _expire(fake_conversation: Any, gw: GatewayProc) -> None:
    """What the instances bucket's TTL does to a killed gateway's heartbeat (the shared test
    bucket has a longer TTL than ENV's, so expire it by hand)."""
    kv = await fake_conversation.nc.jetstream().key_value(subjects.KV_INSTANCES)
    await kv.delete(gw.name)


async def _reaped(gw: GatewayProc, dead: GatewayProc) -> str:
    """The reaping gateway's log line about ``dead`` (waits for it)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for line in gw.proc.tail().splitlines():
            if f"instance {dead.name}:" in line and "offline events published" in line:
                return line
        await asyncio.sleep(0.2)
    raise TimeoutError(gw.proc.tail())


async def _resume_announced_online(
    clients: Any, gw: GatewayProc, bob: Any, *, pid: str, session: str, cid: str
) -> None:
    """``pid`` resumes ``session`` on ``gw``: ``bob`` gets its ``presence:online``, once."""
    mark = len(bob.frames)
    back = await _resume(clients, gw, pid, session, cid)
    await _joined(back, cid)
    await bob.wait_for(
        lambda f: f.get("event") == "presence:online" and f["data"]["principalId"] == pid
    )
    assert len(presence_frames(bob, pid, "presence:online", mark)) == 1


async def test_a_killed_gateways_client_resumes_without_presence_online(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    carol_id = uid("carol")  # stays away: reaped later
    gw1, gw2, alice, alice_id, bob, _, cid, _ = await _setup(
        gateway_factory, clients, fake_conversation, carol_id
    )
    session = _session(alice)
    gw1.proc.kill()  # SIGKILL: nobody told the others alice went offline
    await asyncio.wait_for(alice.closed.wait(), 10)
    mark = len(bob.frames)
    back = await _resume(clients, gw2, alice_id, session, cid)
    await _joined(back, cid)
    await _typing_seen(back, bob, alice_id, cid)
    assert presence_frames(bob, alice_id, "presence:online", mark) == []
    # Her gateway's clients are reaped later: carol (still away) goes offline; alice,
    # resumed before, does not.
    await _expire(fake_conversation, gw1)
    off = await bob.wait_for(
        lambda f: f.get("event") == "presence:offline" and f["data"]["principalId"] == carol_id,
        timeout=15,
    )
    assert off["data"]["reason"] == "instance-lost"
    assert "1 offline events published" in await _reaped(gw2, gw1)
    await _typing_seen(back, bob, alice_id, cid)
    assert presence_frames(bob, alice_id, "presence:offline", mark) == []


async def test_a_resume_after_the_reaping_is_announced_online(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw1, gw2, alice, alice_id, bob, _, cid, _ = await _setup(
        gateway_factory, clients, fake_conversation
    )
    session = _session(alice)
    gw1.proc.kill()
    await _expire(fake_conversation, gw1)
    off = await bob.wait_for(
        lambda f: f.get("event") == "presence:offline" and f["data"]["principalId"] == alice_id,
        timeout=15,
    )
    assert off["data"]["reason"] == "instance-lost"
    await _resume_announced_online(clients, gw2, bob, pid=alice_id, session=session, cid=cid)


async def test_a_resume_after_a_close_is_announced_online(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    _, gw2, alice, alice_id, bob, _, cid, _ = await _setup(
        gateway_factory, clients, fake_conversation
    )
    session = _session(alice)
    await alice.close()
    await bob.wait_for(
        lambda f: f.get("event") == "presence:offline" and f["data"]["principalId"] == alice_id
    )
    await _resume_announced_online(clients, gw2, bob, pid=alice_id, session=session, cid=cid)


async def test_a_kicked_connection_and_its_resume_announce_nothing(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    dave_id = uid("dave")  # stays on gw1: a fence for what gw1 publishes
    _, gw2, alice, alice_id, bob, _, cid, others = await _setup(
        gateway_factory, clients, fake_conversation, dave_id
    )
    (dave,) = others
    mark = len(bob.frames)
    # A half-dead connection: alice resumes elsewhere while gw1 still holds the old one.
    back = await _resume(clients, gw2, alice_id, _session(alice), cid)
    await asyncio.wait_for(alice.closed.wait(), 10)
    assert alice.ws.close_code == 1008
    await _joined(back, cid)
    await _typing_seen(back, bob, alice_id, cid)  # gw2's publishes so far
    await asyncio.sleep(0.3)  # gw1's cleanup of the kicked connection
    await _typing_seen(dave, bob, dave_id, cid)  # gw1's publishes so far
    assert presence_frames(bob, alice_id, "presence:offline", mark) == []
    assert presence_frames(bob, alice_id, "presence:online", mark) == []


async def test_a_carried_conversation_that_refuses_the_resume_says_offline(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw1, gw2, alice, alice_id, bob, _, cid, _ = await _setup(
        gateway_factory, clients, fake_conversation
    )
    session = _session(alice)
    gw1.proc.kill()
    await asyncio.wait_for(alice.closed.wait(), 10)
    fake_conversation.convs[cid]["parts"].discard(alice_id)  # removed while away
    back = await _resume(clients, gw2, alice_id, session, cid)
    refused = await back.wait_for(lambda f: f.get("event") == "error")
    assert refused["error"]["code"] == "FORBIDDEN"
    assert refused["error"]["details"]["conversationId"] == cid
    off = await bob.wait_for(
        lambda f: f.get("event") == "presence:offline" and f["data"]["principalId"] == alice_id
    )
    assert "reason" not in off["data"]


async def _entry_written(kv: Any, key: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if (await kv.get(key)).value == b"1":
                return
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            pass
        assert time.monotonic() < deadline, f"presence entry {key} not written"
        await asyncio.sleep(0.2)


async def test_the_presence_refresh_writes_a_lost_entry_again(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    """The refresh (every presenceTtl/3, not acknowledged) writes each principal's entry
    again: one lost (here deleted) is back within a refresh."""
    gw = gateway_factory(ENV)
    alice_id = uid("alice")
    await clients(gw.ws_url, alice_id)
    kv = await fake_conversation.nc.jetstream().key_value(subjects.KV_PRESENCE)
    key = f"user.{alice_id}.{gw.name}"
    await _entry_written(kv, key)
    await kv.delete(key)
    await _entry_written(kv, key)


async def test_a_slow_rejoin_is_asked_once_not_again_every_attempt_timeout(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    """A storm makes the service slow, not gone: a batched rejoin it answers after 2 s (over
    the 0.75 s attempt timeout of the gateway's requests) reaches it once, not once per
    attempt timeout (each copy was read again: the storm's work multiplied)."""
    gw1, gw2, alice, alice_id, _, _, cid, _ = await _setup(
        gateway_factory, clients, fake_conversation
    )
    session = _session(alice)
    copies: list[bytes] = []

    async def count(msg: Any) -> None:
        copies.append(msg.data)

    sub = await fake_conversation.nc.subscribe(REJOIN_SUBJECT, cb=count)
    fake_conversation.rejoin_delay = 2.0
    gw1.proc.kill()
    await asyncio.wait_for(alice.closed.wait(), 10)
    back = await _resume(clients, gw2, alice_id, session, cid)
    await _joined(back, cid)
    await sub.unsubscribe()
    assert len(copies) == 1
