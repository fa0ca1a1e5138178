"""The group commit writes the next batch while it announces the last one (sequencer.py).

Real store (the embedded server, durable mode); the publisher is the test's, so that it can
hold a batch's announce and look at what the store has meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from parley_contract import jsonutil
from parley_contract.commands import ConversationCreate, MessageSend
from parley_contract.errors import ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Message
from parley_conversation import domain
from parley_conversation.jobs import SendResult
from parley_conversation.sequencer import Sequencer
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer

from .conftest import fresh_store

ALICE = Principal(id="u-alice", kind=PrincipalKind.USER)


@pytest.fixture
async def store(store_server: StoreServer) -> AsyncIterator[MongoStore]:
    async with fresh_store(store_server.url, "parley_pipeline") as s:
        yield s


class TwoBatches:
    """A first send, and a second one queued while the first batch is being written; the
    first batch's announce (its first publish) is held until ``released`` is set, then
    ``then`` runs (raise to make the announce fail)."""

    def __init__(self, store: MongoStore, cid: str, then: Callable[[], None] = lambda: None):
        self.store, self.cid, self.then = store, cid, then
        self.released = asyncio.Event()
        self.publishing = asyncio.Event()
        self.published: list[int] = []
        self.later: list[asyncio.Task[SendResult]] = []
        self.seq = Sequencer(store, self.publish, on_batch=self.on_batch)

    async def publish(self, subject: str, payload: bytes) -> None:
        if not self.publishing.is_set():
            self.publishing.set()
            await self.released.wait()
            self.then()
        self.published.append(int(jsonutil.loads(payload)["seq"]))

    def send(self, text: str) -> asyncio.Task[SendResult]:
        cmd = MessageSend(conversation_id=self.cid, content=text)
        return asyncio.create_task(self.seq.send(ALICE, domain.new_message(ALICE, cmd)))

    def on_batch(self, size: int) -> None:
        if not self.later:  # taken: the next send is queued while this batch is written
            self.later.append(self.send("second"))

    async def start(self) -> tuple[asyncio.Task[SendResult], asyncio.Task[SendResult]]:
        conv = domain.new_conversation(ALICE, ConversationCreate(conversation_id=self.cid))
        await self.store.insert_conversation(conv)
        first = self.send("first")
        await asyncio.wait_for(self.publishing.wait(), 10)  # the first announce is held
        return first, self.later[0]

    async def stored(self) -> list[Message]:
        messages, _more = await self.store.list_messages(self.cid, 0, None, 10)
        return messages


async def test_the_next_batch_is_stored_while_the_last_one_is_announced(
    store: MongoStore,
) -> None:
    run = TwoBatches(store, "c-pipe")
    first, second = await run.start()
    # The second batch reaches the store although the first one's frames wait...
    for _ in range(500):
        if len(await run.stored()) == 2:
            break
        await asyncio.sleep(0.01)
    stored = await run.stored()
    assert [m.content for m in stored] == ["first", "second"]
    # ...but nothing of it is published, and nobody answered, before the first batch is.
    assert not first.done() and not second.done() and run.published == []
    run.released.set()
    results = await asyncio.gather(first, second)
    assert [r.seq for r in results] == [m.seq for m in stored]
    assert run.published == [m.seq for m in stored]
    await run.seq.drain()


async def test_a_failed_announce_fails_only_its_own_batch(store: MongoStore) -> None:
    def broken() -> None:
        raise RuntimeError("the bus broke")

    run = TwoBatches(store, "c-fail", then=broken)
    first, second = await run.start()
    run.released.set()
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(outcomes[0], ParleyError)  # its announce failed: not acked
    assert isinstance(outcomes[1], SendResult)  # the next batch is
    assert [m.content for m in await run.stored()] == ["first", "second"]
    assert outcomes[1].seq == (await run.stored())[1].seq
    await run.seq.drain()
