"""Sequence epochs (issue 11): a log found shorter than the seqs handed out starts a new
epoch, so the seqs used again are not taken for duplicates. Real NATS (KV) and real store;
the log is truncated behind the service's back, then the service restarts."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from pymongo import AsyncMongoClient

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_conversation.service import ConversationService
from parley_devstack.servers import NatsServer, StoreServer

from .conftest import Request, settings_for, user

ALICE = user("u-alice")


async def test_a_shorter_history_starts_a_new_epoch(
    nats_server: NatsServer, store_server: StoreServer, db_name: str, request_: Request
) -> None:
    settings = settings_for(nats_server.url, store_server.url, db_name)
    svc = ConversationService(settings)
    await svc.start()
    nc = await nats.connect(nats_server.url)
    try:
        r = await request_(subjects.command(Event.CONVERSATION_CREATE), {"title": "t"}, ALICE)
        cid = r["data"]["_id"]
        sub = await nc.subscribe(subjects.conversation_events(cid))
        for i in range(5):
            data = {"conversationId": cid, "content": f"m{i}"}
            r = await request_(subjects.command(Event.MESSAGE_SEND), data, ALICE)
            assert r["success"] and r["data"]["seq"] == i + 2
        kv = await nc.jetstream().key_value(subjects.KV_SEQUENCES)
        for _ in range(50):  # the mark is published without an acknowledgement
            entry = await kv.get(cid)
            if jsonutil.loads(entry.value or b"")["seq"] == 6:
                break
            await asyncio.sleep(0.05)
        assert jsonutil.loads(entry.value or b"") == {"epoch": 0, "seq": 6}
        joined = await request_(
            subjects.command(Event.CONVERSATION_JOIN), {"conversationId": cid}, ALICE
        )
        assert joined["data"]["epoch"] == 0
    finally:
        await svc.stop()
    # A lost write: seqs 5 and 6 were published (and acked) but the store no longer has them.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store_server.url)
    await client[db_name]["messages"].delete_many({"conversationId": cid, "seq": {"$gte": 5}})
    await client.close()

    svc = ConversationService(settings)  # a restart: nothing cached
    await svc.start()
    try:
        data = {"conversationId": cid, "content": "after"}
        r = await request_(subjects.command(Event.MESSAGE_SEND), data, ALICE)
        assert r["success"] and r["data"]["seq"] == 5  # from the log: no hole
        frames = []
        async for msg in sub.messages:
            frames.append(jsonutil.loads(msg.data))
            if frames[-1]["data"].get("content") == "after":
                break
        assert frames[-1]["seq"] == 5 and frames[-1]["epoch"] == 1
        assert all(f["epoch"] == 0 for f in frames[:-1])
        joined = await request_(
            subjects.command(Event.CONVERSATION_JOIN), {"conversationId": cid}, ALICE
        )
        assert joined["data"]["epoch"] == 1 and joined["data"]["lastSeq"] == 5
        body = {"principal": ALICE, "conversationId": cid, "afterSeq": 0, "limit": 100}
        replay = await request_(subjects.QUERY_EVENTS_SINCE, None, raw=jsonutil.dumps(body))
        assert [(f["seq"], f["epoch"]) for f in replay["data"]["events"]] == [
            (1, 0),
            (2, 0),
            (3, 0),
            (4, 0),
            (5, 1),
        ]
        entry = await kv.get(cid)
        assert jsonutil.loads(entry.value or b"")["epoch"] == 1
    finally:
        await svc.stop()
        await nc.drain()
