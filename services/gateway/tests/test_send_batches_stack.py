"""Batched sends against the real stack (parley_gateway.chains; test_send_batches.py has
the rest): a burst with bad commands in the middle, stored in order, the service's batched
requests counted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack

from .conftest import http_get, joined_conversation, uid
from .test_send_batches import RATE, bad_frames, burst, check


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    """The real stack, its gateways allowing these bursts (the rate limit is not tested here)."""
    with module_stack(
        nats_server, store_server, servers_dir, "send_batches", gateway_env=RATE
    ) as s:
        yield s


async def test_real_service_stores_a_burst_in_order(stack: Stack, clients: Any) -> None:
    alice = await clients(stack.ws_url(0), uid("alice"))
    bob = await clients(stack.ws_url(1), uid("bob"))
    cid = await joined_conversation(alice)
    bad = bad_frames(cid)
    seqs = check(await burst(alice, cid, 40, bad), 40, bad)
    # Replayed from the store to another member: the same order.
    r = await bob.cmd("conversation:join", {"conversationId": cid, "sinceSeq": 0})
    assert not r["success"]  # not a participant: bob sees nothing
    await alice.wait_for(lambda f: f.get("seq") == seqs[-1])
    news = [f for f in alice.events("message:new", cid)]
    assert [f["data"]["content"] for f in news] == [f"m{i}" for i in range(40) if i not in bad]
    url = f"{stack.conversation[0].base_url}/metrics"
    text = (await asyncio.to_thread(http_get, url))[1].decode()
    batched = [
        line
        for line in text.splitlines()
        if line.startswith("parley_conversation_requests_total")
        and 'operation="message:send.batch"' in line
        and 'outcome="ok"' in line
    ]
    assert batched and float(batched[0].rsplit(" ", 1)[1]) >= 1, batched
