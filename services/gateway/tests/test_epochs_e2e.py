"""Issue 11, no silent reuse of seqs: the store's history of a conversation ends before seqs
that clients were given (a write lost behind the services' back), the conversation service
restarts, and the next message reuses a seq. Real processes: the joined client receives it
(a new epoch), it is not dropped as a duplicate."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from parley_devstack.servers import NatsServer, StoreServer, free_port
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack


@pytest.fixture
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    with module_stack(
        nats_server, store_server, servers_dir, "ep", gateway_ports=[free_port()]
    ) as s:
        yield s


async def test_a_reused_seq_reaches_the_joined_client_in_a_new_epoch(
    stack: Stack, clients: Any
) -> None:
    alice = await clients(stack.ws_url(0), f"alice-{uuid.uuid4().hex[:6]}")
    r = await alice.cmd("conversation:create", {"title": "t"})
    cid = r["data"]["_id"]
    joined = await alice.cmd("conversation:join", {"conversationId": cid})
    assert joined["data"]["epoch"] == 0
    for i in range(4):
        r = await alice.cmd("message:send", {"conversationId": cid, "content": f"m{i}"})
        assert r["success"] and r["data"]["seq"] == i + 2
    await alice.wait_for(lambda f: f.get("seq") == 5 and "id" not in f)
    await asyncio.sleep(0.5)  # the high-water mark (published without an ack) is in
    store: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.config.mongodb_url)
    try:
        log = store[stack.config.database]["messages"]
        await log.delete_many({"conversationId": cid, "seq": {"$gte": 4}})  # 4 and 5 lost
    finally:
        await store.close()
    await asyncio.to_thread(stack.restart, stack.conversation[0])  # nothing cached
    r = await alice.cmd("message:send", {"conversationId": cid, "content": "after"})
    assert r["success"] and r["data"]["seq"] == 4, r  # from what is stored: no hole
    frame = await alice.wait_for(
        lambda f: f.get("event") == "message:new" and f["data"].get("content") == "after"
    )
    assert frame["seq"] == 4 and frame["epoch"] == 1
    r = await alice.cmd("message:send", {"conversationId": cid, "content": "next"})
    nxt = await alice.wait_for(
        lambda f: f.get("event") == "message:new" and f["data"].get("content") == "next"
    )
    assert nxt["seq"] == 5 and nxt["epoch"] == 1
    again = await alice.cmd("conversation:join", {"conversationId": cid, "sinceSeq": 0})
    assert again["data"]["epoch"] == 1
