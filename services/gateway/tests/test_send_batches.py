"""A connection's sends to one conversation queued behind one in flight go as one batched
request (parley_gateway.chains, issue 16): stored in the sender's order, each answered to
its own id as its own request would have been; a bad one fails alone; a service from before
batches (no responder for them) gets them one by one. Against the narrow fake service (its
batches counted); test_send_batches_stack.py: the real stack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from parley_contract import jsonutil
from parley_devstack.servers import NatsServer

from .conftest import Client, http_get, joined_conversation
from .fakeconv import FakeConversationService

RATE = {"PARLEY_GATEWAY_COMMANDS_PER_SECOND": "1000"}


@pytest.fixture
async def old_conversation(nats_server: NatsServer) -> AsyncIterator[FakeConversationService]:
    """The fake subscribed as a conversation service from before batched sends."""
    svc = await FakeConversationService(nats_server.url, batches=False).start()
    yield svc
    await svc.stop()


async def burst(client: Client, cid: str, n: int, bad: dict[int, dict[str, Any]]) -> list[Any]:
    """``n`` frames fired without waiting (``bad``: frames replacing some sends); the
    replies, in the order they arrived."""
    for i in range(n):
        frame = bad.get(i) or {
            "event": "message:send",
            "id": f"s-{i}",
            "data": {"conversationId": cid, "content": f"m{i}"},
        }
        await client.send_raw(jsonutil.dumps(frame).decode())
    for i in range(n):
        await client.wait_for(answer_to(f"s-{i}"))
    return [f for f in client.frames if str(f.get("id", "")).startswith("s-")]


def answer_to(cmd_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("id") == cmd_id and "success" in f


def bad_frames(cid: str) -> dict[int, dict[str, Any]]:
    return {
        # refused by the gateway (an unknown frame field), before any request
        7: {"event": "message:send", "id": "s-7", "data": {"conversationId": cid}, "x": 1},
        # refused by the service (content must be a string)
        13: {"event": "message:send", "id": "s-13", "data": {"conversationId": cid, "content": 5}},
        # another command in the chain: waits its turn, ends a batch
        21: {"event": "typing:start", "id": "s-21", "data": {"conversationId": cid}},
    }


def check(replies: list[Any], n: int, bad: dict[int, Any]) -> list[int]:
    """Every id answered once, in the order sent; the bad ones alone failed; the seqs of
    the others: in the order sent, consecutive."""
    assert [r["id"] for r in replies] == [f"s-{i}" for i in range(n)]
    assert replies[7]["error"]["code"] == "VALIDATION_ERROR"
    assert replies[7]["event"] == "message:send"
    assert replies[13]["error"]["code"] == "VALIDATION_ERROR"
    assert replies[13]["error"]["details"]["field"] == "content"
    assert replies[21]["event"] == "typing:start" and replies[21]["success"]
    good = [r for i, r in enumerate(replies) if i not in bad]
    assert all(r["success"] and r["event"] == "message:send" for r in good), good
    seqs = [r["data"]["seq"] for r in good]
    assert seqs == list(range(seqs[0], seqs[0] + len(good)))
    assert [r["data"]["content"] for r in good] == [f"m{i}" for i in range(n) if i not in bad]
    return seqs


async def test_queued_sends_go_together_in_order(
    gateway_factory: Any, clients: Any, fake_conversation: FakeConversationService
) -> None:
    gw = gateway_factory(RATE)
    alice = await clients(gw.ws_url, "alice")
    cid = await joined_conversation(alice)
    bad = bad_frames(cid)
    check(await burst(alice, cid, 40, bad), 40, bad)
    stored = [f["data"]["content"] for f in fake_conversation.events[cid]]
    assert stored == [f"m{i}" for i in range(40) if i not in bad]
    # Some went together (the first of a burst goes alone, the rest queue behind it).
    assert fake_conversation.batch_sizes and max(fake_conversation.batch_sizes) > 1
    assert sum(fake_conversation.batch_sizes) < 40
    # Live delivery of every stored message, in order.
    await alice.wait_for(lambda f: f.get("seq") == len(stored))
    assert alice.seqs(cid) == list(range(1, len(stored) + 1))


async def test_a_service_without_batches_gets_them_one_by_one(
    gateway_factory: Any, clients: Any, old_conversation: FakeConversationService
) -> None:
    """A rolling upgrade: a new gateway in front of an older conversation service, which
    has no responder for a batch: the gateway sends the queued sends one by one at once
    (no timeout on the way: the burst is answered within the test's wait)."""
    gw = gateway_factory(RATE)
    alice = await clients(gw.ws_url, "alice")
    cid = await joined_conversation(alice)
    bad = bad_frames(cid)
    check(await burst(alice, cid, 30, bad), 30, bad)
    assert old_conversation.batch_sizes == []
    stored = [f["data"]["content"] for f in old_conversation.events[cid]]
    assert stored == [f"m{i}" for i in range(30) if i not in bad]
    text = (await asyncio.to_thread(http_get, f"{gw.http}/metrics"))[1].decode()
    # Batches were tried, none timed out and was sent again.
    assert "parley_gateway_send_batch_messages_count" in text
    assert 'parley_gateway_request_retries_total{outcome="retried"}' not in text


async def test_a_batch_without_an_answer_goes_one_by_one_with_its_keys(
    gateway_factory: Any, clients: Any, fake_conversation: FakeConversationService
) -> None:
    """A batch nobody answers in time (its replica died with it): the sends go again one
    by one with the keys they had in the batch, so a message the batch stored would be
    answered as stored, not stored twice; every command is answered, in order."""
    gw = gateway_factory({**RATE, "PARLEY_GATEWAY_REQUEST_TIMEOUT_SECONDS": "1.5"})
    alice = await clients(gw.ws_url, "alice")
    cid = await joined_conversation(alice)
    fake_conversation.swallow_batches = True
    for i in range(10):
        data: dict[str, Any] = {"conversationId": cid, "content": f"m{i}"}
        if i % 2:
            data["clientMessageId"] = f"mine-{i}"
        frame = {"event": "message:send", "id": f"s-{i}", "data": data}
        await alice.send_raw(jsonutil.dumps(frame).decode())
    for i in range(10):
        await alice.wait_for(answer_to(f"s-{i}"), timeout=30)
    replies = [f for f in alice.frames if str(f.get("id", "")).startswith("s-")]
    assert [r["id"] for r in replies] == [f"s-{i}" for i in range(10)]
    assert all(r["success"] for r in replies), replies
    assert [r["data"]["content"] for r in replies] == [f"m{i}" for i in range(10)]
    assert fake_conversation.batch_keys  # some went as a batch first
    batched = set(fake_conversation.batch_keys)
    alone = [k for k in fake_conversation.send_keys if k in batched]
    assert len(alone) == len(batched)  # each sent again alone, with its key
    assert {f"mine-{i}" for i in range(1, 10, 2)} & batched <= set(alone)
