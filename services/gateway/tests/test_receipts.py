"""Issue 17: delivery and read receipts and unread counts on real processes — two gateways
(a NATS server of the stack's own, with per-role permissions: the gateways' delivery reports
are allowed), the conversation service, the store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley_contract import jsonutil
from parley_devstack.servers import StoreServer
from parley_devstack.stack import Stack, StackConfig

from .conftest import http_get, token


@pytest.fixture(scope="module")
def stack(store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    cfg = StackConfig(
        workdir=servers_dir / f"receipts-stack-{uuid.uuid4().hex[:8]}",
        mongodb_url=store_server.url,
        database=f"parley_receipts_{uuid.uuid4().hex[:10]}",
        conversation_replicas=1,
        agent_bridges=0,
        service_env={
            "gateway": {
                "PARLEY_GATEWAY_DRAIN_SECONDS": "0.5",
                "PARLEY_GATEWAY_DELIVERY_REPORT_SECONDS": "0.2",
            },
            "conversation": {"PARLEY_CONVERSATION_RECEIPTS_WINDOW_SECONDS": "0.2"},
        },
    )
    with Stack(cfg) as s:
        yield s


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def aget(url: str, tok: str) -> tuple[int, Any]:
    status, body, _ = await asyncio.to_thread(http_get, url, tok)
    return status, jsonutil.loads(body)


async def unread(stack: Stack, gw: int, who: str, cid: str) -> int:
    status, body = await aget(f"{stack.gateway_url(gw)}/v1/conversations", token(who))
    assert status == 200, body
    item = next(c for c in body["data"]["items"] if c["_id"] == cid)
    count: int = item["unreadCount"]
    return count


def cursor_of(frame: dict[str, Any], who: str) -> int:
    return max((c["seq"] for c in frame["data"]["cursors"] if c["principalId"] == who), default=0)


async def test_delivered_and_read_reach_the_sender_on_the_other_gateway(
    stack: Stack, clients: Any
) -> None:
    ada, bob, cat = _uid("ada"), _uid("bob"), _uid("cat")
    a = await clients(stack.ws_url(0), ada)
    b = await clients(stack.ws_url(1), bob)
    b_other = await clients(stack.ws_url(0), bob)  # bob's second device, not watching
    c = await clients(stack.ws_url(0), cat)  # a participant who watches nothing
    r = await a.cmd("conversation:create", {"title": "t", "participants": [bob, cat]})
    assert r["success"], r
    cid = r["data"]["_id"]
    for client in (a, b):
        assert (await client.cmd("conversation:join", {"conversationId": cid}))["success"]
    seqs = []
    for text in ("one", "two"):
        r = await a.cmd("message:send", {"conversationId": cid, "content": text})
        assert r["success"] and r["data"]["messageStatus"] == "sent", r
        seqs.append(r["data"]["seq"])

    # Bob's connection (gateway 1) received them: ada (gateway 0) is told.
    delivered = await a.wait_for(
        lambda f: f.get("event") == "message:delivered" and cursor_of(f, bob) >= seqs[-1]
    )
    assert delivered["conversationId"] == cid
    status, page = await aget(f"{stack.gateway_url(0)}/v1/conversations/{cid}/messages", token(ada))
    assert status == 200
    assert [m["messageStatus"] for m in page["data"]["items"] if m["role"] == "user"] == [
        "delivered",
        "delivered",
    ]
    # Cat watches nothing: the activity event tells her list that something new is there.
    await c.wait_for(
        lambda f: (
            f.get("event") == "conversation:activity"
            and f["data"]["conversationId"] == cid
            and f["data"]["lastSeq"] == seqs[-1]
        )
    )
    assert await unread(stack, 0, cat, cid) == 2

    # Bob reads: unread goes to 0, ada sees "seen by bob", bob's other device updates.
    assert await unread(stack, 1, bob, cid) == 2
    r = await b.cmd("conversation:read", {"conversationId": cid, "seq": seqs[0]})
    assert r["success"] and r["data"]["unreadCount"] == 1, r
    r = await b.cmd("conversation:read", {"conversationId": cid, "seq": seqs[-1]})
    assert r["success"] and r["data"] == {"conversationId": cid, "seq": seqs[-1], "unreadCount": 0}
    seen = await a.wait_for(
        lambda f: f.get("event") == "conversation:read" and cursor_of(f, bob) == seqs[-1]
    )
    assert seen["conversationId"] == cid
    own = await b_other.wait_for(
        lambda f: f.get("event") == "conversation:read" and cursor_of(f, bob) == seqs[-1]
    )
    assert own["data"]["unreadCount"] == 0
    assert await unread(stack, 1, bob, cid) == 0
    assert await unread(stack, 0, ada, cid) == 0  # her own messages are never unread
    assert await unread(stack, 0, cat, cid) == 2

    # A joiner learns where everyone stands (and its own unread count).
    r = await c.cmd("conversation:join", {"conversationId": cid})
    assert r["success"], r
    joined = await c.wait_for(lambda f: f.get("event") == "conversation:joined")
    assert joined["data"]["unreadCount"] == 2 and joined["data"]["readSeq"] == 0
    cursors = {x["principalId"]: x for x in joined["data"]["cursors"]}
    assert cursors[bob]["readSeq"] == seqs[-1] and "deliveredSeq" not in cursors[bob]
    names = {p.get("userId"): p.get("name") for p in joined["data"]["conversation"]["participants"]}
    assert names[ada] == ada.title() and names[bob] == bob.title()


async def test_read_refusals(stack: Stack, clients: Any) -> None:
    ada, eve = _uid("ada"), _uid("eve")
    a = await clients(stack.ws_url(0), ada)
    e = await clients(stack.ws_url(1), eve)
    r = await a.cmd("conversation:create", {"title": "t"})
    cid = r["data"]["_id"]
    r = await a.cmd("message:send", {"conversationId": cid, "content": "hi"})
    last = r["data"]["seq"]
    r = await a.cmd("conversation:read", {"conversationId": cid, "seq": last + 1000})
    assert r["error"]["code"] == "VALIDATION_ERROR" and r["error"]["details"]["field"] == "seq"
    assert r["error"]["details"]["lastSeq"] == last
    r = await e.cmd("conversation:read", {"conversationId": cid, "seq": 1})
    assert r["error"]["code"] == "FORBIDDEN", r
    for bad in (
        {"conversationId": cid, "seq": -1},
        {"conversationId": cid, "seq": "1"},
        {"conversationId": cid, "seq": 1.5},
        {"conversationId": cid},
        {"conversationId": "x.>", "seq": 1},
        {"conversationId": cid, "seq": 1, "extra": True},
    ):
        r = await a.cmd("conversation:read", bad)
        assert r["error"]["code"] == "VALIDATION_ERROR", (bad, r)
    huge = (
        '{"event": "conversation:read", "id": "huge", "data": {"conversationId": "%s", "seq": %d}}'
    )
    await a.send_raw(huge % (cid, 2**70))
    r = await a.wait_for(lambda f: f.get("id") == "huge")
    assert r["error"]["code"] == "VALIDATION_ERROR", r
    # The connection is unharmed.
    r = await a.cmd("conversation:read", {"conversationId": cid, "seq": last})
    assert r["success"] and r["data"]["unreadCount"] == 0, r
