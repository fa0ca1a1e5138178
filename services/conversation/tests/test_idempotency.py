"""Every writing command with an idempotency key is applied once (issue 11): what a gateway
relies on when it sends a command again, to another replica, after getting no answer."""

from __future__ import annotations

import asyncio
from typing import Any

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_conversation.service import ConversationService

from .conftest import Request, user

ALICE = user("u-alice")
BOB = user("u-bob")


def keyed(request_: Request, event: Event, data: dict[str, Any], key: str) -> Any:
    body = {"principal": ALICE, "data": data, "idempotencyKey": key}
    return request_(subjects.command(event), None, raw=jsonutil.dumps(body))


async def log_of(request_: Request, cid: str) -> list[dict[str, Any]]:
    body = {"principal": ALICE, "conversationId": cid, "afterSeq": 0, "limit": 1000}
    r = await request_(subjects.QUERY_EVENTS_SINCE, None, raw=jsonutil.dumps(body))
    assert r["success"], r
    events: list[dict[str, Any]] = r["data"]["events"]
    return events


async def twice(request_: Request, event: Event, data: dict[str, Any], key: str) -> Any:
    """The command, then the same again (a retry), then 5 more at once (retries racing)."""
    first = await keyed(request_, event, data, key)
    assert first["success"], first
    again = await keyed(request_, event, data, key)
    burst = await asyncio.gather(*(keyed(request_, event, data, key) for _ in range(5)))
    for r in (again, *burst):
        assert r["success"], r
        assert r["data"] == first["data"]
    return first["data"]


async def test_each_writing_command_is_applied_once_per_key(
    service: ConversationService, request_: Request
) -> None:
    conv = await twice(
        request_, Event.CONVERSATION_CREATE, {"title": "t", "participants": ["u-bob"]}, "k-create"
    )
    cid = conv["_id"]
    mine = await request_(subjects.QUERY_CONVERSATIONS_LIST, {}, ALICE)
    assert [c["_id"] for c in mine["data"]["items"]].count(cid) == 1
    assert len(mine["data"]["items"]) == 1  # one conversation, not seven

    sent = await twice(request_, Event.MESSAGE_SEND, {"conversationId": cid, "content": "hi"}, "k1")
    assert sent["clientMessageId"] == "k1"  # the key is the message's clientMessageId
    mid = sent["_id"]
    await twice(request_, Event.CONVERSATION_UPDATE, {"conversationId": cid, "title": "u"}, "k2")
    change = {"conversationId": cid, "messageId": mid}
    await twice(request_, Event.MESSAGE_EDIT, {**change, "content": "edited"}, "k3")
    await twice(request_, Event.MESSAGE_REACT, {**change, "emoji": "👍"}, "k4")
    await twice(request_, Event.TASK_CREATE, {"conversationId": cid, "title": "a task"}, "k5")
    await twice(request_, Event.MESSAGE_DELETE, change, "k6")  # a repeat finds it deleted

    names = [f["event"] for f in await log_of(request_, cid)]
    assert names == [
        "conversation:created",
        "message:new",
        "conversation:updated",
        "message:updated",
        "message:reacted",
        "task:created",
        "message:deleted",
    ]
    # Another key is another command: applied again.
    other = await keyed(request_, Event.MESSAGE_REACT, {**change, "emoji": "👍"}, "k7")
    assert not other["success"] and other["error"]["code"] == "CONFLICT"  # deleted meanwhile
    # The same key from another principal is not the same command.
    data = {"conversationId": cid, "title": "bob's"}
    body = {"principal": BOB, "data": data, "idempotencyKey": "k2"}
    r = await request_(subjects.command(Event.CONVERSATION_UPDATE), None, raw=jsonutil.dumps(body))
    assert r["success"] and r["data"]["title"] == "bob's"
    assert [f["event"] for f in await log_of(request_, cid)][-1] == "conversation:updated"


async def test_a_bad_key_is_refused(service: ConversationService, request_: Request) -> None:
    body = {"principal": ALICE, "data": {"title": "t"}, "idempotencyKey": "x" * 129}
    r = await request_(subjects.command(Event.CONVERSATION_CREATE), None, raw=jsonutil.dumps(body))
    assert not r["success"] and r["error"]["code"] == "VALIDATION_ERROR"


async def test_a_client_message_id_of_another_sender_is_a_conflict(
    service: ConversationService, request_: Request
) -> None:
    """Bob reuses the clientMessageId of Alice's message: CONFLICT, not an ack of Alice's
    message (and his own silently not stored); Alice's retry still gets hers. Also when both
    race into one batch."""
    created = await request_(
        subjects.command(Event.CONVERSATION_CREATE), {"participants": ["u-bob"]}, ALICE
    )
    cid = created["data"]["_id"]
    send = subjects.command(Event.MESSAGE_SEND)
    data = {"conversationId": cid, "content": "alice's", "clientMessageId": "same"}
    first = await request_(send, data, ALICE)
    assert first["success"], first
    bobs = await request_(send, {**data, "content": "bob's"}, BOB)
    assert not bobs["success"] and bobs["error"]["code"] == "CONFLICT", bobs
    again = await request_(send, data, ALICE)
    assert again["success"] and again["data"] == first["data"]
    raced = {**data, "clientMessageId": "raced"}
    replies = await asyncio.gather(
        *(request_(send, raced, who) for who in (ALICE, BOB, ALICE, BOB))
    )
    winners = {r["data"]["createdBy"] for r in replies if r["success"]}
    assert len(winners) == 1, replies
    assert all(r["error"]["code"] == "CONFLICT" for r in replies if not r["success"])
    contents = [e["data"]["content"] for e in await log_of(request_, cid) if "content" in e["data"]]
    assert contents == ["alice's", "alice's"]  # the first, and the raced one (one winner)
