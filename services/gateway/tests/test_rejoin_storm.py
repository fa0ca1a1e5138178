"""Issue 16, the reconnect storm: the clients of a gateway killed with SIGKILL resume on the
other one at once, and their conversations come back through batched rejoins
(parley_gateway.rejoins) — with the authorization of a join of their own: a principal
removed while it was away does not get the conversation back. Real processes: two
gateways, the conversation service, nats-server and the store (parley_devstack).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack

from .conftest import http_get, uid

MEMBERS = 6  # resuming together, besides the removed one


@pytest.fixture
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    with module_stack(nats_server, store_server, servers_dir, "rejoin_storm") as s:
        yield s


def _batches(stack: Stack, index: int) -> tuple[float, float]:
    """(requests, principals) of the batched rejoins gateway ``index`` sent."""
    _, body, _ = http_get(stack.gateway_url(index) + "/metrics")
    text = body.decode()

    def value(name: str) -> float:
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    return (
        value("parley_gateway_rejoin_batch_principals_count"),
        value("parley_gateway_rejoin_batch_principals_sum"),
    )


def _session(client: Any) -> str:
    return str(client.frames[0]["data"]["sessionId"])


async def test_killed_gateways_clients_rejoin_in_batches_and_removed_stays_out(
    stack: Stack, clients: Any
) -> None:
    owner, gone = uid("alice"), uid("carol")
    members = [uid(f"m{i}") for i in range(MEMBERS)]
    alice = await clients(stack.ws_url(1), owner)
    r = await alice.cmd("conversation:create", {"title": "t", "participants": [*members, gone]})
    assert r["success"], r
    cid = r["data"]["_id"]
    r = await alice.cmd("conversation:create", {"title": "carol's other", "participants": [gone]})
    other = r["data"]["_id"]
    assert (await alice.cmd("conversation:join", {"conversationId": cid}))["success"]

    on_first = {p: await clients(stack.ws_url(0), p) for p in [*members, gone]}
    for p, c in on_first.items():
        assert (await c.cmd("conversation:join", {"conversationId": cid}))["success"], p
    carol = on_first[gone]
    assert (await carol.cmd("conversation:join", {"conversationId": other}))["success"]
    sent = await alice.cmd("message:send", {"conversationId": cid, "content": "before"})
    for c in on_first.values():
        await c.wait_for(lambda f: f.get("seq") == sent["data"]["seq"])
    await asyncio.sleep(0.6)  # > the session flush interval: delivered seqs saved
    sessions = {p: _session(c) for p, c in on_first.items()}

    stack.gateways[0].process.kill()  # SIGKILL: no drain, no goodbye
    await asyncio.gather(*(asyncio.wait_for(c.closed.wait(), 10) for c in on_first.values()))
    # While they are away: carol is removed, then the conversation goes on.
    removing = {"conversationId": cid, "removeParticipants": [gone]}
    r = await alice.cmd("conversation:update", removing)
    assert r["success"], r
    removal = r["data"]["lastSeq"]
    after = await alice.cmd("message:send", {"conversationId": cid, "content": "while away"})
    assert after["success"], after
    missed = after["data"]["seq"]
    before_batches = _batches(stack, 1)

    # All of them at once on the other gateway, each with its session.
    back = await asyncio.gather(
        *(clients(stack.ws_url(1), p, query=f"?session={sessions[p]}") for p in on_first)
    )
    resumed = dict(zip(on_first, back, strict=True))
    for p, c in resumed.items():
        hello = c.frames[0]
        assert hello["event"] == "reconnected" and hello["data"]["sessionId"] == sessions[p]

    for p in members:
        c = resumed[p]
        joined = await c.wait_for(
            lambda f: f.get("event") == "conversation:joined" and f.get("conversationId") == cid
        )
        assert joined["data"]["lastSeq"] >= missed
        # The receipts of a join of its own: alice's two messages unread, nothing read.
        assert joined["data"]["cursors"] == []
        assert (joined["data"]["unreadCount"], joined["data"]["readSeq"]) == (2, 0)
        await c.wait_for(lambda f: f.get("seq") == missed)
        assert c.seqs(cid) == list(range(sent["data"]["seq"] + 1, missed + 1))  # once, in order

    # carol: her other conversation is back; this one is refused, named, and stays shut.
    c = resumed[gone]
    await c.wait_for(
        lambda f: f.get("event") == "conversation:joined" and f.get("conversationId") == other
    )
    refused = await c.wait_for(
        lambda f: f.get("event") == "error" and f["error"]["details"].get("conversationId") == cid
    )
    assert refused["error"]["code"] == "FORBIDDEN"
    assert not [
        f
        for f in c.frames
        if f.get("event") == "conversation:joined" and f.get("conversationId") == cid
    ]
    typing = await c.cmd("typing:start", {"conversationId": cid})
    assert not typing["success"] and typing["error"]["code"] == "FORBIDDEN"
    live = await alice.cmd("message:send", {"conversationId": cid, "content": "live"})
    for p in members:
        await resumed[p].wait_for(lambda f: f.get("seq") == live["data"]["seq"])
    assert not [s for s in c.seqs(cid) if s >= removal]
    got = await c.cmd("conversation:join", {"conversationId": cid})  # asking again: no
    assert not got["success"] and got["error"]["code"] == "FORBIDDEN"

    # Every rejoin (carol's two included) went through the batched request; how many
    # shared one depends on the timing (test_rejoins.py checks the coalescing itself).
    requests, principals = (a - b for a, b in zip(_batches(stack, 1), before_batches, strict=True))
    assert principals == MEMBERS + 2 and 2 <= requests <= principals
