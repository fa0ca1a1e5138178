"""A closed connection's session keeps the offline mark its cleanup saved (sessions.Restored,
docs/protocol.md 3.5 Presence): a later write of it — the TTL refresh that listed the
connection before it closed, a flush that took it dirty — must not put back a session
without the mark (a resume would then announce nothing to members who saw it go offline)
and without its conversations (emptied by the leave: a resume would restore none).

A real gateway in this process (the closed connection at hand), on the session's
nats-server with the narrow conversation service of conftest.
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import connect

from parley_contract import jsonutil, subjects
from parley_devstack.servers import NatsServer

from .conftest import Client, joined_conversation, token, uid
from .inprocess import running_gateway


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
