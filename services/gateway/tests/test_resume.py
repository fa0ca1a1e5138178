"""Resuming a session on real gateway processes and real NATS: after a drain, on another
gateway while the old socket is still open, and from the client's own last seqs (``since``).

The conversation side is the narrow fake of conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import signal
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parley_contract import jsonutil

from .conftest import joined_conversation, token


async def test_drain_closes_1001_and_session_resumes_elsewhere(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw1 = gateway_factory()
    gw2 = gateway_factory()
    alice = await clients(gw1.ws_url, "alice")
    bob = await clients(gw2.ws_url, "bob")
    cid = await joined_conversation(alice, "bob")
    await bob.cmd("conversation:join", {"conversationId": cid})
    await alice.cmd("message:send", {"conversationId": cid, "content": "one"})
    await alice.wait_for(lambda f: f.get("seq") == 1)
    session = alice.frames[0]["data"]["sessionId"]

    gw1.proc.signal(signal.SIGTERM)
    await asyncio.wait_for(alice.closed.wait(), 10)
    assert alice.ws.close_code == 1001
    assert gw1.proc.proc.wait(timeout=15) == 0
    for text in ("two", "three"):
        r = await bob.cmd("message:send", {"conversationId": cid, "content": text})
        assert r["success"]

    again = await clients(gw2.ws_url, "alice", query=f"?session={session}")
    first = again.frames[0]
    assert first["event"] == "reconnected"
    assert first["data"]["sessionId"] == session
    assert first["data"]["conversations"] == [{"conversationId": cid, "lastSeq": 1}]
    await again.wait_for(lambda f: f.get("seq") == 3)
    assert again.seqs(cid) == [2, 3]
    # live events continue
    await bob.cmd("message:send", {"conversationId": cid, "content": "four"})
    await again.wait_for(lambda f: f.get("seq") == 4)
    assert again.seqs(cid) == [2, 3, 4]

    # another principal cannot take the session over
    mallory = await clients(gw2.ws_url, "mallory", query=f"?session={session}")
    assert mallory.frames[0]["event"] == "connected"
    assert mallory.frames[0]["data"]["sessionId"] != session


async def test_resuming_a_live_session_elsewhere_closes_the_old_socket(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw1 = gateway_factory()
    gw2 = gateway_factory()
    old = await clients(gw1.ws_url, "alice")
    cid = await joined_conversation(old)
    session = old.frames[0]["data"]["sessionId"]
    await asyncio.sleep(0.5)
    new = await clients(gw2.ws_url, "alice", query=f"?session={session}")
    assert new.frames[0]["event"] == "reconnected"
    await asyncio.wait_for(old.closed.wait(), 10)
    assert old.ws.close_code == 1008
    # the old socket's goodbye does not overwrite the resumed session
    await asyncio.sleep(0.5)
    again = await clients(gw1.ws_url, "alice", query=f"?session={session}")
    assert again.frames[0]["event"] == "reconnected"
    assert again.frames[0]["data"]["conversations"] == [{"conversationId": cid, "lastSeq": 0}]


async def test_resume_with_the_clients_own_last_seqs(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw = gateway_factory()
    alice = await clients(gw.ws_url, "alice")
    bob = await clients(gw.ws_url, "bob")
    cid = (await alice.cmd("conversation:create", {"participants": ["bob"]}))["data"]["_id"]
    assert (await bob.cmd("conversation:join", {"conversationId": cid}))["success"]
    for i in range(5):
        assert (await alice.cmd("message:send", {"conversationId": cid, "content": f"m{i}"}))[
            "success"
        ]
    await bob.wait_for(lambda f: f.get("seq") == 5)
    sid = bob.frames[0]["data"]["sessionId"]
    await bob.close()  # graceful: the session says lastSeq 5

    def since(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(jsonutil.dumps(doc)).decode().rstrip("=")

    # The client says it has seen up to 3 (e.g. the session lagged after a crash): 4 and 5.
    again = await clients(gw.ws_url, "bob", query=f"?session={sid}&since={since({cid: 3})}")
    hello = again.frames[0]
    assert hello["event"] == "reconnected"
    assert hello["data"]["conversations"] == [{"conversationId": cid, "lastSeq": 3}]
    await again.wait_for(lambda f: f.get("seq") == 5)
    assert again.seqs(cid) == [4, 5]
    await again.close()

    # A client ahead of the session gets nothing twice. A conversation the client names that
    # the session lacks is joined again too (a join newer than the last save), authorized
    # like any join: one this client may not join is an error frame naming it.
    doc = {cid: 5, "conv-other": 1}
    third = await clients(gw.ws_url, "bob", query=f"?session={sid}&since={since(doc)}")
    assert third.frames[0]["data"]["conversations"] == [
        {"conversationId": cid, "lastSeq": 5},
        {"conversationId": "conv-other", "lastSeq": 1},
    ]
    await third.wait_for(
        lambda f: (
            f.get("event") == "error"
            and ((f.get("error") or {}).get("details") or {}).get("conversationId") == "conv-other"
        )
    )
    await third.wait_for(lambda f: f.get("event") == "conversation:joined")
    assert (await alice.cmd("message:send", {"conversationId": cid, "content": "m6"}))["success"]
    await third.wait_for(lambda f: f.get("seq") == 6)
    assert third.seqs(cid) == [6]

    for bad in ("not-base64!", since({"a.b": 1}), since({cid: -1}), since({cid: "3"}), "WzFd"):
        url = f"{gw.ws_url}?session={sid}&since={bad}&access_token={token('bob')}"
        with pytest.raises(InvalidStatus) as info:
            await connect(url)
        assert info.value.response.status_code == 422, bad
        body = jsonutil.loads(info.value.response.body)
        assert body["error"]["details"] == {"field": "since"}, bad
