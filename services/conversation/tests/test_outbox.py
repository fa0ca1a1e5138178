"""No agent turn dropped (issue 19, outbox.py): a turn JetStream did not acknowledge is
published again until it does, also one left behind by a replica that died."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import StreamConfig

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_contract.internal import AgentTurn
from parley_contract.streams import agent_turns_stream_config
from parley_conversation.outbox import COLLECTION
from parley_conversation.service import ConversationService
from parley_devstack.natscluster import NatsCluster
from parley_devstack.servers import NatsServer, StoreServer

from .conftest import request_reply, serve_agents, settings_for, user

ALICE = user("u-alice")
CREATE = subjects.command(Event.CONVERSATION_CREATE)
SEND = subjects.command(Event.MESSAGE_SEND)


async def _request(nc: Client, subject: str, data: Any, principal: dict[str, Any]) -> Any:
    body = jsonutil.dumps({"principal": principal, "data": data})
    reply = await request_reply(nc, subject, body, 15)
    assert reply["success"], reply
    return reply["data"]


async def _turns(nc: Client, cid: str, *, want: int, within: float) -> list[AgentTurn]:
    """The turns of ``cid`` in the agent-turns stream, read by sequence and then removed.

    No consumer: the stream is a work queue, which allows one consumer per filter, and on
    the session's shared NATS server a bridge's durable one may already exist (the full run
    failed with "filtered consumer not unique on workqueue stream").
    """
    js = nc.jetstream()
    deadline = time.monotonic() + within
    seen: dict[int, AgentTurn] = {}
    while time.monotonic() < deadline:
        try:  # JetStream may still be electing leaders
            info = await js.stream_info(subjects.STREAM_AGENT_TURNS)
            for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
                if seq in seen:
                    continue
                try:
                    msg = await js.get_msg(subjects.STREAM_AGENT_TURNS, seq)
                except nats.js.errors.NotFoundError:
                    continue
                seen[seq] = AgentTurn.model_validate_json(msg.data or b"")
        except (TimeoutError, nats.errors.Error):
            await asyncio.sleep(0.5)
            continue
        if sum(t.conversation_id == cid for t in seen.values()) >= want:
            # a second more: a duplicate would show up now
            deadline = min(deadline, time.monotonic() + 1.0)
        await asyncio.sleep(0.2)
    mine = [(seq, t) for seq, t in sorted(seen.items()) if t.conversation_id == cid]
    for seq, _ in mine:  # taken, as a bridge would: later tests' bridges must not see them
        with contextlib.suppress(nats.errors.Error):
            await js.delete_msg(subjects.STREAM_AGENT_TURNS, seq)
    return [t for _, t in mine]


async def test_a_turn_sent_without_jetstream_quorum_is_published_once_quorum_returns(
    cluster: NatsCluster, store_server: StoreServer, db_name: str
) -> None:
    keep, *others = cluster.nodes
    url = cluster.urls(nodes=[keep])  # one node: the replica stays connected through it all
    nc = await nats.connect(url)
    js = nc.jetstream()
    config: StreamConfig = agent_turns_stream_config()
    config.num_replicas = 3
    for _ in range(50):  # JetStream on this node may not be up yet
        try:
            await js.add_stream(config)
            break
        except (TimeoutError, nats.errors.Error):
            await asyncio.sleep(0.2)
    await serve_agents(nc, "agent-general")
    svc = ConversationService(settings_for(url, store_server.url, db_name))
    await svc.start()
    try:
        conv = await _request(
            nc, CREATE, {"agentId": "agent-general", "participants": ["u-bob"]}, ALICE
        )
        for node in others:  # 1 of 3 left: no meta leader, no stream leader
            cluster.kill(node)
        sent = await _request(nc, SEND, {"conversationId": conv["_id"], "content": "hi?"}, ALICE)
        outbox = svc.store.messages.database[COLLECTION]
        for _ in range(100):  # the first publish times out (2 s): the entry stays
            if svc.metrics.agent_turn_failures._value.get() >= 1:
                break
            await asyncio.sleep(0.1)
        assert await outbox.count_documents({"_id": sent["_id"]}) == 1
        await asyncio.sleep(3)  # more sweeps fail meanwhile
        assert await outbox.count_documents({}) == 1

        cluster.start_node(others[0])  # 2 of 3: quorum again
        await asyncio.to_thread(cluster.wait_quorum, 30.0)
        turns = await _turns(nc, conv["_id"], want=1, within=40)
        assert [(t.message_id, t.agent_id) for t in turns] == [(sent["_id"], "agent-general")]
        for _ in range(50):
            if await outbox.count_documents({}) == 0:
                break
            await asyncio.sleep(0.1)
        assert await outbox.count_documents({}) == 0
    finally:
        await svc.stop()
        await nc.close()


async def test_a_turn_another_replica_left_in_the_outbox_is_published(
    nats_server: NatsServer, store_server: StoreServer, db_name: str, nc: Client
) -> None:
    await serve_agents(nc, "agent-general")
    svc = ConversationService(settings_for(nats_server.url, store_server.url, db_name))
    await svc.start()
    try:
        conv = await _request(
            nc, CREATE, {"agentId": "agent-general", "participants": ["u-bob"]}, ALICE
        )
        # What a replica killed after writing the entry (before JetStream acked) leaves.
        turn = AgentTurn(
            conversation_id=conv["_id"], agent_id="agent-general", message_id="msg-left", seq=2
        )
        outbox = svc.store.messages.database[COLLECTION]
        await outbox.insert_one(
            {"_id": "msg-left", "turn": turn.model_dump(by_alias=True), "attempts": 0, "due": 0}
        )
        turns = await _turns(nc, conv["_id"], want=1, within=10)
        assert [t.message_id for t in turns] == ["msg-left"]
        assert await outbox.count_documents({}) == 0
    finally:
        await svc.stop()
