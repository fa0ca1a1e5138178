"""Issue 18: gateways and bridges may publish only on a conversation's ephemeral subject
(NATS permissions, parley_contract.nats_auth); a frame with a seq arriving there is forged
and never reaches a client, ephemeral frames there are delivered."""

from __future__ import annotations

from typing import Any

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.events import Event


async def test_a_seq_on_the_ephemeral_subject_is_dropped(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    gw = gateway_factory()
    alice = await clients(gw.ws_url, "alice")
    r = await alice.cmd("conversation:create", {"participants": ["bob"]})
    cid = r["data"]["_id"]
    assert (await alice.cmd("conversation:join", {"conversationId": cid}))["success"]
    nc = fake_conversation.nc
    forged = envelopes.event_frame(Event.MESSAGE_NEW, {"content": "forged"}, conversation_id=cid)
    forged["seq"] = 2
    await nc.publish(subjects.conversation_ephemeral(cid), jsonutil.dumps(forged))
    delta = envelopes.event_frame(Event.MESSAGE_STREAM_DELTA, {"delta": "hi"}, conversation_id=cid)
    await nc.publish(subjects.conversation_ephemeral(cid), jsonutil.dumps(delta))
    await nc.flush()
    await alice.wait_for(lambda f: f.get("event") == "message:stream-delta")
    r = await alice.cmd("message:send", {"conversationId": cid, "content": "real"})
    assert r["success"]
    new = await alice.wait_for(lambda f: f.get("event") == "message:new")
    assert new["data"]["content"] == "real"
    assert all(f.get("data", {}).get("content") != "forged" for f in alice.frames)


async def test_a_forged_turn_frame_does_not_reach_joiners(
    gateway_factory: Any, clients: Any, fake_conversation: Any
) -> None:
    """A turn frame with a seq on the ephemeral subject is dropped before the turn tracker
    sees it: a later joiner gets no snapshot of a stream that never ran."""
    gw = gateway_factory()
    alice = await clients(gw.ws_url, "alice")
    r = await alice.cmd("conversation:create", {"participants": ["bob"]})
    cid = r["data"]["_id"]
    assert (await alice.cmd("conversation:join", {"conversationId": cid}))["success"]
    nc = fake_conversation.nc
    start = {"streamId": "forged", "messageId": "m-forged", "parentMessageId": "p"}
    forged = envelopes.event_frame(Event.MESSAGE_STREAM_START, start, conversation_id=cid)
    forged["seq"] = 2
    await nc.publish(subjects.conversation_ephemeral(cid), jsonutil.dumps(forged))
    typing = envelopes.event_frame(
        Event.TYPING_START, {"conversationId": cid, "userId": "carol"}, conversation_id=cid
    )
    await nc.publish(subjects.conversation_ephemeral(cid), jsonutil.dumps(typing))
    await nc.flush()
    await alice.wait_for(lambda f: f.get("event") == "typing:start")  # the forged one is before
    bob = await clients(gw.ws_url, "bob")
    assert (await bob.cmd("conversation:join", {"conversationId": cid}))["success"]
    assert all(f.get("event") != "message:stream-start" for f in bob.frames)
    assert all(f.get("event") != "message:stream-start" for f in alice.frames)
