"""Acked means stored: a kill -9 of the store under load loses no acknowledged write.

Real processes: the embedded store in its durable mode (servers.StoreServer) killed with
SIGKILL while the real Sequencer and MongoStore (write concern "journaled") are acking sends,
then restarted on the same data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from parley_contract.commands import ConversationCreate, MessageSend
from parley_contract.errors import ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import Principal
from parley_conversation import domain
from parley_conversation.entries import PendingEvent
from parley_conversation.sequencer import Sequencer
from parley_conversation.store import WRITE_CONCERNS, MongoStore
from parley_devstack.servers import StoreServer


def test_write_concern_names() -> None:
    assert WRITE_CONCERNS["journaled"] == {"w": 1, "journal": True}
    assert WRITE_CONCERNS["majority"] == {"w": "majority", "journal": True}


async def test_acked_sends_survive_a_kill_9_of_the_store(tmp_path: Path) -> None:
    server = StoreServer(tmp_path / "store").start()
    assert server.process is not None and "--sync-on-commit" in server.process.argv
    store = MongoStore(server.url, "durable", timeout_ms=2000)
    await store.init()
    alice = Principal(id="u-alice", kind=PrincipalKind.USER)
    convs = [f"c{i}" for i in range(4)]
    for cid in convs:
        await store.insert_conversation(
            domain.new_conversation(alice, ConversationCreate(conversation_id=cid))
        )

    async def publish(subject: str, payload: bytes) -> None:
        return None

    seq = Sequencer(store, publish)
    acked: dict[str, set[int]] = {cid: set() for cid in convs}
    enough = asyncio.Event()

    async def sender(cid: str) -> None:
        k = 0
        while True:
            k += 1
            cmd = MessageSend(conversation_id=cid, content=f"m{k}", client_message_id=f"{cid}-{k}")
            try:
                res = await seq.send(alice, domain.new_message(alice, cmd))
            except ParleyError:
                await asyncio.sleep(0.05)
                continue
            acked[cid].add(res.seq)
            if sum(len(v) for v in acked.values()) >= 200:
                enough.set()

    tasks = [asyncio.create_task(sender(cid)) for cid in convs]
    try:
        await asyncio.wait_for(enough.wait(), 60)
        assert server.process is not None
        server.process.kill()  # SIGKILL, in the middle of the sends
        await asyncio.sleep(0.3)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        with contextlib.suppress(Exception):
            await seq.drain()
        await store.close()
    restarted = StoreServer(tmp_path / "store", port=server.port).start()
    try:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(restarted.url)
        try:
            for cid in convs:
                docs = await client["durable"]["messages"].find({"conversationId": cid}).to_list()
                stored = {int(str(d["seq"])) for d in docs}
                assert acked[cid] <= stored, f"{cid}: acked but lost {acked[cid] - stored}"
                assert stored == set(range(1, len(stored) + 1)), f"{cid}: a hole in the log"
        finally:
            await client.close()
    finally:
        restarted.stop()


async def test_after_a_store_error_the_next_seq_comes_from_the_log(
    store_server: StoreServer, db_name: str
) -> None:
    """A cached next seq is dropped after any error: a log found shorter than what this
    replica wrote (a write lost behind its back) is continued without a hole."""
    store = MongoStore(store_server.url, db_name)
    await store.init()

    def entry(text: str) -> PendingEvent:
        return PendingEvent(Event.TASK_CREATED, lambda _seq: {"text": text})

    def broken(_seq: int) -> dict[str, str]:
        raise RuntimeError("the build of this entry fails")

    try:
        await store.append_events({"c1": [entry("a"), entry("b")]})
        await store.messages.delete_one({"conversationId": "c1", "seq": 2})  # lost
        with pytest.raises(RuntimeError):
            await store.append_events({"c1": [PendingEvent(Event.TASK_CREATED, broken)]})
        res = await store.append_events({"c1": [entry("c")]})
        assert res["c1"][0].seq == 2  # from the log; the cache said 3 (a hole at 2)
        # no error: the cache is used (and is right: nothing else wrote)
        res = await store.append_events({"c1": [entry("d")]})
        assert res["c1"][0].seq == 3
        store.forget_seqs()
        await store.messages.delete_one({"conversationId": "c1", "seq": 3})
        res = await store.append_events({"c1": [entry("e")]})
        assert res["c1"][0].seq == 3
    finally:
        await store.close()


def test_the_store_can_be_made_outside_an_event_loop() -> None:
    """The service builds its MongoStore before its loop runs (python -m parley_conversation):
    the pool listener that drops cached seqs must not need one."""
    store = MongoStore("mongodb://127.0.0.1:1", "unused")
    store.forget_seqs()
