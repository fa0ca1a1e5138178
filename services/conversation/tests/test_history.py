"""The conversation log and the history queries, over the real NATS and store: events since a
seq replay what was published, pages of conversations and messages, replies cut in bytes,
durable frames' headers, the fold of an old event log."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_conversation.service import ConversationService

from .calls import (
    ALICE,
    BOB,
    CREATE,
    DELETE,
    EDIT,
    REACT,
    SEND,
    TASK,
    UPDATE,
    create,
    events_since,
    list_all,
)
from .conftest import Request, user

# The agents these tests assign are served (an unserved agentId is NOT_FOUND).
pytestmark = pytest.mark.usefixtures("served_agents")


async def test_events_since_replays_exactly_what_was_published(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    cid = (await create(request_, agentId="agent-general"))["_id"]
    frames: list[dict[str, Any]] = []

    async def on_event(msg: Any) -> None:
        frame = jsonutil.loads(msg.data)
        if "seq" in frame:  # durable ones (agent:thinking "queued" is ephemeral)
            frames.append(frame)

    sub = await nc.subscribe(subjects.conversation_events(cid), cb=on_event)
    m1 = (await request_(SEND, {"conversationId": cid, "content": "one"}, ALICE))["data"]
    m2 = (await request_(SEND, {"conversationId": cid, "content": "two"}, BOB))["data"]
    r = await request_(
        EDIT, {"conversationId": cid, "messageId": m1["_id"], "content": "uno"}, ALICE
    )
    assert r["success"] and r["data"]["content"] == "uno" and r["data"]["editedAt"], r
    r = await request_(EDIT, {"conversationId": cid, "messageId": m1["_id"], "content": "x"}, BOB)
    assert r["error"]["code"] == "FORBIDDEN"
    r = await request_(REACT, {"conversationId": cid, "messageId": m2["_id"], "emoji": "👍"}, ALICE)
    assert r["data"]["reactions"] == {"👍": ["u-alice"]}, r
    r = await request_(DELETE, {"conversationId": cid, "messageId": m2["_id"]}, BOB)
    assert r["success"] and r["data"]["deletedAt"] and r["data"]["isActive"] is False, r
    r = await request_(DELETE, {"conversationId": cid, "messageId": m2["_id"]}, BOB)
    assert r["error"]["code"] == "CONFLICT"
    r = await request_(UPDATE, {"conversationId": cid, "title": "renamed", "tags": ["a"]}, BOB)
    assert r["success"] and r["data"]["title"] == "renamed", r
    r = await request_(TASK, {"conversationId": cid, "title": "summarize"}, ALICE)
    assert r["success"] and r["data"]["agentId"] == "agent-general", r
    for _ in range(100):
        if len(frames) >= 7:
            break
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    log = await events_since(request_, cid)
    replayed = [f for f in log["data"]["events"] if f["seq"] > 1]
    published = sorted(frames, key=lambda f: f["seq"])
    # Every event replays as published, except that a message:new carries the message as
    # it is now (the message is its own log entry): the edit, reaction and deletion that
    # follow it in the log bring a replaying client to the same state as a live one.
    assert [f for f in replayed if f["event"] != "message:new"] == [
        f for f in published if f["event"] != "message:new"
    ]
    by_id = {m["_id"]: m for m in (await list_all(request_, cid))}
    for got, live in zip(replayed[:2], published[:2], strict=True):
        assert {k: v for k, v in got.items() if k != "data"} == {
            k: v for k, v in live.items() if k != "data"
        }
        assert got["data"] == by_id[live["data"]["_id"]]
    assert published[0]["data"]["content"] == "one" and replayed[0]["data"]["content"] == "uno"
    assert [f["event"] for f in replayed] == [
        "message:new",
        "message:new",
        "message:updated",
        "message:reacted",
        "message:deleted",
        "conversation:updated",
        "task:created",
    ]
    assert [f["seq"] for f in replayed] == list(range(2, 9))
    # afterSeq/untilSeq window.
    body = {"principal": BOB, "conversationId": cid, "afterSeq": 3, "untilSeq": 5}
    w = await request_(subjects.QUERY_EVENTS_SINCE, None, raw=jsonutil.dumps(body))
    assert [f["seq"] for f in w["data"]["events"]] == [4, 5]
    assert w["data"]["lastSeq"] == 8


async def test_history_queries(service: ConversationService, request_: Request) -> None:
    carol = user("u-carol")
    ids = []
    for i in range(5):
        r = await request_(CREATE, {"title": f"c{i}"}, carol)
        ids.append(r["data"]["_id"])
    await request_(UPDATE, {"conversationId": ids[0], "status": "archived"}, carol)
    page1 = await request_(subjects.QUERY_CONVERSATIONS_LIST, {"limit": 2}, carol)
    assert page1["success"], page1
    got = [c["_id"] for c in page1["data"]["items"]]
    cursor = page1["data"]["nextCursor"]
    while cursor:
        page = await request_(
            subjects.QUERY_CONVERSATIONS_LIST, {"limit": 2, "cursor": cursor}, carol
        )
        got += [c["_id"] for c in page["data"]["items"]]
        cursor = page["data"]["nextCursor"]
    assert got == list(reversed(ids))  # newest first
    # The gateway forwards absent HTTP query parameters as null.
    nulls = {"status": None, "cursor": None, "limit": None}
    everything = await request_(subjects.QUERY_CONVERSATIONS_LIST, nulls, carol)
    assert [c["_id"] for c in everything["data"]["items"]] == list(reversed(ids))
    archived = await request_(subjects.QUERY_CONVERSATIONS_LIST, {"status": "archived"}, carol)
    assert [c["_id"] for c in archived["data"]["items"]] == [ids[0]]

    cid = ids[1]
    for i in range(7):
        await request_(SEND, {"conversationId": cid, "content": f"m{i}"}, carol)
    q = subjects.QUERY_MESSAGES_LIST
    latest = (await request_(q, {"conversationId": cid, "limit": 3}, carol))["data"]
    assert [m["content"] for m in latest["items"]] == ["m4", "m5", "m6"] and latest["hasMore"]
    older = (
        await request_(
            q, {"conversationId": cid, "limit": 3, "beforeSeq": latest["items"][0]["seq"]}, carol
        )
    )["data"]
    assert [m["content"] for m in older["items"]] == ["m1", "m2", "m3"] and older["hasMore"]
    nulls = {"conversationId": cid, "afterSeq": None, "beforeSeq": None, "limit": None}
    default = (await request_(q, nulls, carol))["data"]
    assert len(default["items"]) == 7 and not default["hasMore"]
    newer = (await request_(q, {"conversationId": cid, "limit": 5, "afterSeq": 4}, carol))["data"]
    assert [m["seq"] for m in newer["items"]] == [5, 6, 7, 8] and not newer["hasMore"]


async def test_history_replies_are_cut_in_bytes_and_page_through(
    service: ConversationService, request_: Request
) -> None:
    """10 messages of ~128 KB each (1.3 MB) would be one reply over NATS's 1 MB max payload,
    never delivered. The replies are cut near 512 KB, say hasMore, and page through."""
    conv = await create(request_)
    cid = conv["_id"]
    big = "\U0001f600" * 32_000  # 32,000 characters, 128,000 bytes of UTF-8
    for i in range(10):
        r = await request_(SEND, {"conversationId": cid, "content": f"{i}{big}"[:32_000]}, ALICE)
        assert r["success"], r["error"]
    budget = service.settings.max_reply_bytes
    # Events: pages of several events, under the budget, gapless, until hasMore is false.
    seqs: list[int] = []
    after, pages = 0, 0
    while True:
        msg = await request_(
            subjects.QUERY_EVENTS_SINCE,
            None,
            raw=jsonutil.dumps(
                {"principal": ALICE, "conversationId": cid, "afterSeq": after, "limit": 1000}
            ),
        )
        assert msg["success"], msg
        page = msg["data"]["events"]
        assert page and len(jsonutil.dumps(msg)) <= budget + 4096
        seqs += [f["seq"] for f in page]
        after, pages = page[-1]["seq"], pages + 1
        if not msg["data"]["hasMore"]:
            break
        assert after < msg["data"]["lastSeq"]
    assert seqs == list(range(1, 12))  # conversation:created + 10 messages
    assert pages >= 3
    # Messages forward (afterSeq): cut at the newest end.
    got: list[int] = []
    after = 0
    while True:
        r = await request_(
            subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "afterSeq": after, "limit": 500}
        )
        assert r["success"], r
        items = r["data"]["items"]
        assert items and len(jsonutil.dumps(r)) <= budget + 4096
        got += [m["seq"] for m in items]
        after = items[-1]["seq"]
        if not r["data"]["hasMore"]:
            break
    assert got == list(range(2, 12))
    # The latest messages (no cursor): cut at the oldest end, then page back with beforeSeq.
    got = []
    before: int | None = None
    while True:
        data: dict[str, Any] = {"conversationId": cid, "limit": 500}
        if before is not None:
            data["beforeSeq"] = before
        r = await request_(subjects.QUERY_MESSAGES_LIST, data)
        assert r["success"], r
        items = r["data"]["items"]
        assert items and len(jsonutil.dumps(r)) <= budget + 4096
        got = [m["seq"] for m in items] + got
        before = items[0]["seq"]
        if not r["data"]["hasMore"]:
            break
    assert got == list(range(2, 12))
    assert r["data"]["items"][0]["content"].startswith("0")


async def test_durable_frames_carry_seq_in_headers(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    """Gateways order durable frames by their headers without decoding them."""
    cid = (await create(request_))["_id"]
    got: asyncio.Queue[Any] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await got.put(msg)

    sub = await nc.subscribe(subjects.conversation_events(cid), cb=on_event)
    await nc.flush()
    r = await request_(SEND, {"conversationId": cid, "content": "hello"}, ALICE)
    msg = await asyncio.wait_for(got.get(), 10)
    await sub.unsubscribe()
    frame = jsonutil.loads(msg.data)
    assert msg.headers == subjects.durable_headers(
        cid, r["data"]["seq"], frame.get("epoch", 0), "message:new"
    )
    assert frame["seq"] == r["data"]["seq"]


async def test_an_old_event_log_is_folded_into_the_conversation_log(
    service: ConversationService, request_: Request
) -> None:
    """A database of before 2026-11-26: every durable frame in `events`, messages also in
    `messages`, and one message left only in `events` by a crash. The fold (run at startup)
    moves the log over once, adds the missing message and its totals, and drops `events`;
    new writes continue after the old seqs."""
    from parley_contract import envelopes
    from parley_contract.commands import ConversationCreate, MessageSend
    from parley_contract.internal import Principal
    from parley_contract.jsonutil import model_json
    from parley_conversation import domain
    from parley_conversation.documents import to_doc
    from parley_conversation.legacy import fold_legacy_event_log

    alice = Principal.model_validate(ALICE)
    conv = domain.new_conversation(alice, ConversationCreate(conversation_id="legacy-c1"))
    await service.store.insert_conversation(conv)
    cid = conv.id
    both = domain.new_message(alice, MessageSend(conversation_id=cid, content="in both"))
    both = both.model_copy(update={"seq": 2})
    lost = domain.new_message(alice, MessageSend(conversation_id=cid, content="only in events"))
    lost = lost.model_copy(update={"seq": 4})

    def old(seq: int, event: Event, data: Any) -> dict[str, Any]:
        frame = envelopes.event_frame(event, data, conversation_id=cid, seq=seq)
        return {
            "_id": f"{cid}:{seq}",
            "conversationId": cid,
            "seq": seq,
            "event": event.value,
            "frame": frame,
        }

    await service.store.legacy_events.insert_many(
        [
            old(1, Event.CONVERSATION_CREATED, {"conversationId": cid}),
            old(2, Event.MESSAGE_NEW, model_json(both)),
            old(3, Event.CONVERSATION_UPDATED, {"conversationId": cid, "title": "renamed"}),
            old(4, Event.MESSAGE_NEW, model_json(lost)),
        ]
    )
    await service.store.messages.insert_one(to_doc(both))

    added = await fold_legacy_event_log(service.store)
    assert [m.id for m in added] == [lost.id]
    log = (await events_since(request_, cid))["data"]["events"]
    assert [(f["seq"], f["event"]) for f in log] == [
        (1, "conversation:created"),
        (2, "message:new"),
        (3, "conversation:updated"),
        (4, "message:new"),
    ]
    assert log[2]["data"]["title"] == "renamed"
    assert [f["data"]["content"] for f in (log[1], log[3])] == ["in both", "only in events"]
    listed = await request_(subjects.QUERY_MESSAGES_LIST, {"conversationId": cid})
    assert [(m["content"], m["seq"]) for m in listed["data"]["items"]] == [
        ("in both", 2),
        ("only in events", 4),
    ]
    got = (await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}))["data"]
    assert got["totalMessages"] == 1 and got["lastSeq"] == 4  # the old doc had no totals
    assert got["lastMessage"]["content"] == "only in events"
    # Idempotent: a second run (another replica, a restart) finds nothing to fold.
    assert await fold_legacy_event_log(service.store) == []
    r = await request_(SEND, {"conversationId": cid, "content": "new"}, ALICE)
    assert r["success"] and r["data"]["seq"] == 5, r
