"""A closed connection's session keeps the offline mark its cleanup saved (sessions.Restored,
docs/protocol.md 3.5 Presence), and the others get ``presence:offline`` only after it is
stored: a resume elsewhere by someone who saw the offline is announced online.

- A later write of the session — the TTL refresh that listed the connection before it
  closed, a flush that took it dirty — must not put back a session without the mark (a
  resume would then announce nothing) and without its conversations (emptied by the leave).
- A slow JetStream (acknowledging after SAVE_SECONDS, a starved box) is waited for before
  the offline events: before, the save gave up, the offline went out, and the resume read
  the session without the mark (test_resume_presence's close-then-resume failed under load).

Real gateways in this process (their objects at hand), on the session's nats-server with
the narrow conversation service of conftest.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from nats.js.kv import KeyValue
from websockets.asyncio.client import connect

from parley_contract import jsonutil, subjects
from parley_devstack.servers import NatsServer
from parley_devstack.testing import session_saved
from parley_gateway.server import Gateway
from parley_gateway.sessions import SAVE_SECONDS

from .conftest import Client, joined_conversation, presence_frames, token, uid
from .inprocess import running_gateway


class LatePuts:
    """A sessions bucket whose acknowledged puts reach JetStream ``delay`` seconds late."""

    def __init__(self, kv: KeyValue, delay: float) -> None:
        self._kv, self._delay = kv, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def put(self, key: str, value: bytes) -> int:
        await asyncio.sleep(self._delay)
        return await self._kv.put(key, value)


async def _client(gw: Gateway, pid: str, query: str = "") -> tuple[Client, dict[str, Any]]:
    sep = "&" if query else "?"
    url = f"ws://127.0.0.1:{gw.settings.port}/ws{query}{sep}access_token={token(pid)}"
    client = Client(await connect(url)).start()
    hello = await client.wait_for(lambda f: f.get("event") in ("connected", "reconnected"))
    return client, hello


async def _entry(fake_conversation: Any, session: str) -> dict[str, Any]:
    kv = await fake_conversation.nc.jetstream().key_value(subjects.KV_SESSIONS)
    doc = jsonutil.loads((await kv.get(session)).value or b"{}")
    assert isinstance(doc, dict)
    return doc


async def test_a_write_after_the_cleanup_keeps_the_offline_mark(
    nats_server: NatsServer, fake_conversation: Any
) -> None:
    async with running_gateway(nats_server.url, "mark") as gw:
        hub = gw.hub
        url = f"ws://127.0.0.1:{gw.settings.port}/ws?access_token={token(uid('alice'))}"
        alice = Client(await connect(url)).start()
        hello = await alice.wait_for(lambda f: f.get("event") == "connected")
        session = hello["data"]["sessionId"]
        cid = await joined_conversation(alice)
        conn = hub.sessions[session]
        await alice.close()
        for _ in range(200):  # the cleanup: left, saved with the mark, unregistered
            if session not in hub.sessions and session not in hub.cleaning:
                break
            await asyncio.sleep(0.05)
        saved = await _entry(fake_conversation, session)
        assert saved["offline"] is True and cid in saved["conversations"], saved

        # What a refresh does with a connection it listed before the close (acknowledged),
        # and a flush with one it took dirty (not acknowledged; an acknowledged put after it
        # on the same connection is the fence: JetStream stores them in order).
        await hub.save_session(conn)
        await hub.save_session(conn, ack=False)
        await hub.flush_publishes()
        assert hub.kv_sessions is not None
        await hub.kv_sessions.put(f"fence-{uid('f')}", b"{}")

        after = await _entry(fake_conversation, session)
        assert after.get("offline") is True, after
        assert cid in after["conversations"], after


async def _late_saves(
    gw1: Gateway, gw2: Gateway, fake_conversation: Any, delay: float
) -> tuple[str, Client, str, str, Client]:
    """alice on gw1 and bob on gw2 in one conversation, alice's session saved; then gw1's
    session puts reach JetStream ``delay`` seconds late."""
    alice_id, bob_id = uid("alice"), uid("bob")
    alice, hello = await _client(gw1, alice_id)
    session = hello["data"]["sessionId"]
    cid = await joined_conversation(alice, bob_id)
    bob, _ = await _client(gw2, bob_id)
    assert (await bob.cmd("conversation:join", {"conversationId": cid}))["success"]
    await session_saved(fake_conversation.nats_url, session, {cid: 0})  # its flush
    assert gw1.hub.kv_sessions is not None
    gw1.hub.kv_sessions = cast(KeyValue, LatePuts(gw1.hub.kv_sessions, delay))
    return alice_id, alice, session, cid, bob


async def test_a_slow_offline_save_is_waited_for_before_the_offline(
    nats_server: NatsServer, fake_conversation: Any
) -> None:
    async with (
        running_gateway(nats_server.url, "late1") as gw1,
        running_gateway(nats_server.url, "late2") as gw2,
    ):
        alice_id, alice, session, cid, bob = await _late_saves(
            gw1, gw2, fake_conversation, SAVE_SECONDS + 0.5
        )

        await alice.close()
        await bob.wait_for(
            lambda f: f.get("event") == "presence:offline" and f["data"]["principalId"] == alice_id
        )
        mark = len(bob.frames)
        back, hello = await _client(gw2, alice_id, f"?session={session}")
        assert hello["event"] == "reconnected", hello
        await back.wait_for(
            lambda f: f.get("event") == "conversation:joined" and f.get("conversationId") == cid
        )
        await bob.wait_for(
            lambda f: f.get("event") == "presence:online" and f["data"]["principalId"] == alice_id
        )
        assert len(presence_frames(bob, alice_id, "presence:online", mark)) == 1


async def test_a_resume_here_during_a_slow_offline_save_announces_nothing(
    nats_server: NatsServer, fake_conversation: Any
) -> None:
    """The same gateway: the resume waits SAVE_SECONDS of the save at most, then kicks the
    closed connection. Its members never hear of it: no offline, no online."""
    async with (
        running_gateway(nats_server.url, "here1") as gw1,
        running_gateway(nats_server.url, "here2") as gw2,
    ):
        alice_id, alice, session, cid, bob = await _late_saves(
            gw1, gw2, fake_conversation, SAVE_SECONDS + 1.5
        )
        mark = len(bob.frames)

        await alice.close()
        back, hello = await _client(gw1, alice_id, f"?session={session}")
        assert hello["event"] == "reconnected", hello
        await back.wait_for(
            lambda f: f.get("event") == "conversation:joined" and f.get("conversationId") == cid
        )
        await asyncio.sleep(2.0)  # the late save, then the old connection's unregister
        assert (await back.cmd("typing:start", {"conversationId": cid}))["success"]
        await bob.wait_for(  # a fence: what gw1 published before it reached bob
            lambda f: f.get("event") == "typing:start" and f["data"]["principalId"] == alice_id
        )
        assert presence_frames(bob, alice_id, "presence:offline", mark) == []
        assert presence_frames(bob, alice_id, "presence:online", mark) == []
