"""Conformance suite of the repository: the embedded store and, with MONGODB_URL, MongoDB.

No mock database: every test talks to a real MongoDB-wire server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import (
    Conversation,
    ConversationStatus,
    LastMessage,
    Message,
    MessageType,
    Participant,
    ParticipantRole,
    Role,
)
from parley_conversation.domain import now_ms
from parley_conversation.entries import MessageTotals, PendingEvent, message_as_stored
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer
from parley_devstack.testing import real_mongodb_url

from .conftest import fresh_store, message_pending

BACKENDS = ["embedded", pytest.param("mongodb", marks=pytest.mark.mongodb)]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, store_server: StoreServer) -> str:
    if request.param == "embedded":
        return store_server.url
    url = real_mongodb_url()
    if url is None:
        pytest.skip("MONGODB_URL is not set: no real MongoDB to check against")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[MongoStore]:
    async with fresh_store(store_url, "parley_conf") as s:
        yield s


@pytest.fixture
async def other(store: MongoStore, store_url: str) -> AsyncIterator[MongoStore]:
    """A second replica's store on the same database."""
    s = MongoStore(store_url, store._db.name)
    try:
        yield s
    finally:
        await s.close()


def conv(cid: str, *users: str, agent: str | None = None, at_offset: int = 0) -> Conversation:
    at = now_ms() + timedelta(milliseconds=at_offset)
    parts = [Participant(user_id=u, role=ParticipantRole.USER, joined_at=at) for u in users]
    if agent:
        parts.append(Participant(agent_id=agent, role=ParticipantRole.AGENT, joined_at=at))
    return Conversation(
        id=cid,
        conversation_id=cid,
        title=cid,
        agent_id=agent,
        participants=parts,
        created_at=at,
        updated_at=at,
        created_by=users[0] if users else "svc",
    )


def msg(cid: str, seq: int, content: str = "x", **extra: object) -> Message:
    at = now_ms()
    return Message.model_validate(
        {
            "_id": f"msg-{uuid.uuid4().hex[:10]}",
            "conversationId": cid,
            "role": "user",
            "content": content,
            "seq": seq,
            "createdAt": at,
            "createdBy": "u-a",
            **extra,
        }
    )


def pending(n: int, cmid: str | None = None) -> PendingEvent:
    return PendingEvent(Event.MESSAGE_NEW, lambda seq: {"n": n, "seq": seq}, cmid)


U = Principal(id="u-a", kind=PrincipalKind.USER)


async def test_conversation_insert_get_conflict(store: MongoStore) -> None:
    c = conv("c1", "u-a", "u-b", agent="ag-1")
    await store.insert_conversation(c)
    got = await store.get_conversation("c1")
    assert got == c
    with pytest.raises(ParleyError) as exc:
        await store.insert_conversation(c)
    assert exc.value.code is ErrorCode.CONFLICT
    assert await store.get_conversation("nope") is None


async def test_update_conversation_is_optimistic(store: MongoStore) -> None:
    c = conv("c1", "u-a")
    await store.insert_conversation(c)
    new = c.model_copy(update={"title": "t2", "updated_at": now_ms() + timedelta(seconds=1)})
    assert await store.update_conversation(c, new)
    stale = c.model_copy(update={"title": "t3"})
    assert not await store.update_conversation(c, stale)
    got = await store.get_conversation("c1")
    assert got is not None and got.title == "t2"


async def test_list_conversations_filters_and_pages(store: MongoStore) -> None:
    for i in range(5):
        await store.insert_conversation(conv(f"c{i}", "u-a", agent="ag-1", at_offset=i))
    await store.insert_conversation(conv("other", "u-b", at_offset=9))
    left = conv("left", "u-a", at_offset=10)
    left.participants[0].left_at = now_ms()
    await store.insert_conversation(left)
    archived = conv("arch", "u-a", at_offset=11)
    archived.status = ConversationStatus.ARCHIVED
    await store.insert_conversation(archived)

    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_conversations(U, None, cursor, 2)
        seen += [c["_id"] for c in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["arch", "c4", "c3", "c2", "c1", "c0"]
    page = await store.list_conversations(U, ConversationStatus.ARCHIVED, None, 10)
    assert [c["_id"] for c in page.items] == ["arch"]
    agent = Principal(id="ag-1", kind=PrincipalKind.AGENT)
    page = await store.list_conversations(agent, None, None, 10)
    assert [c["_id"] for c in page.items] == ["c4", "c3", "c2", "c1", "c0"]


async def test_append_events_consecutive_and_replayable(store: MongoStore) -> None:
    res = (await store.append_events({"c1": [pending(i) for i in range(5)]}))["c1"]
    assert [r.seq for r in res] == [1, 2, 3, 4, 5]
    assert [r.frame["data"] for r in res] == [{"n": i, "seq": i + 1} for i in range(5)]
    res = (await store.append_events({"c1": [pending(9)]}))["c1"]
    assert res[0].seq == 6 and res[0].frame["conversationId"] == "c1"
    frames = await store.events_since("c1", 2, None, 100)
    assert [f["seq"] for f in frames] == [3, 4, 5, 6]
    assert frames[0] == res_frame_of(await store.events_since("c1", 2, 3, 10))
    assert await store.last_seq("c1") == 6
    assert await store.last_seq("c2") == 0


async def test_a_message_is_its_own_log_entry(store: MongoStore, other: MongoStore) -> None:
    """A message:new is stored once, as the message: the log replays it, history lists it,
    and the other log entries are never taken for messages."""
    first = msg("c1", 0, "hello", clientMessageId="k1")
    res = await store.append_events({"c1": [pending(1), message_pending(first), pending(3)]})
    seqs = [r.seq for r in res["c1"]]
    assert seqs == [1, 2, 3]
    frame = res["c1"][1].frame
    assert frame["event"] == "message:new" and frame["seq"] == 2
    assert frame["data"]["content"] == "hello" and frame["data"]["seq"] == 2
    assert frame["timestamp"] == frame["data"]["createdAt"]
    assert await store.events_since("c1", 0, None, 10) == [r.frame for r in res["c1"]]
    items, _ = await store.list_messages("c1", None, None, 10)
    stored = message_as_stored(first, 2)
    assert stored.id != first.id  # keyed: its id comes from its clientMessageId
    assert [(m.id, m.seq) for m in items] == [(stored.id, 2)]
    assert (await store.get_message("c1", stored.id)) == stored
    assert await store.get_message("c1", "c1:1") is None  # a log entry, not a message
    assert await store.update_message("c1", "c1:3", {"content": "x"}) is None
    assert await store.react("c1", "c1:3", "👍", "u-a", remove=False) is None
    # The same clientMessageId again, from the other replica: the stored one, nothing new.
    again = msg("c1", 0, "hello again", clientMessageId="k1")
    dup = (await other.append_events({"c1": [message_pending(again)]}))["c1"][0]
    assert dup.duplicate and dup.seq == 2 and dup.frame == frame
    found = await other.frames_by_client_ids({"c1": ["k1"]})
    assert found == {("c1", "k1"): frame}
    assert await other.last_seq("c1") == 3


def res_frame_of(frames: list[dict[str, object]]) -> dict[str, object]:
    assert len(frames) == 1
    return frames[0]


async def test_two_replicas_never_gap_or_duplicate(store: MongoStore, other: MongoStore) -> None:
    async def writer(s: MongoStore, base: int) -> list[int]:
        seqs: list[int] = []
        for b in range(10):
            res = await s.append_events({"c1": [pending(base + b * 10 + k) for k in range(10)]})
            seqs += [r.seq for r in res["c1"]]
        return seqs

    a, b = await asyncio.gather(writer(store, 0), writer(other, 1000))
    assert sorted(a + b) == list(range(1, 201))
    frames = await store.events_since("c1", 0, None, 1000)
    assert [f["seq"] for f in frames] == list(range(1, 201))
    # Each replica's own events keep their submission order.
    for mine in (a, b):
        assert mine == sorted(mine)


async def test_client_message_id_is_unique_in_the_log(store: MongoStore, other: MongoStore) -> None:
    first = (await store.append_events({"c1": [pending(1, "cm-1"), pending(2)]}))["c1"]
    res = (await other.append_events({"c1": [pending(3), pending(4, "cm-1"), pending(5, "cm-2")]}))[
        "c1"
    ]
    assert [(r.seq, r.duplicate) for r in res] == [(3, False), (1, True), (4, False)]
    assert res[1].frame == first[0].frame
    frames = await store.events_since("c1", 0, None, 100)
    assert [f["seq"] for f in frames] == [1, 2, 3, 4]
    known = await store.frames_by_client_ids({"c1": ["cm-1", "cm-2", "cm-x"], "c2": ["cm-1"]})
    assert set(known) == {("c1", "cm-1"), ("c1", "cm-2")} and known[("c1", "cm-2")]["seq"] == 4
    # Events without clientMessageId never collide on it.
    more = (await store.append_events({"c1": [pending(6), pending(7)]}))["c1"]
    assert [r.seq for r in more] == [5, 6]


async def test_many_conversations_in_one_append(store: MongoStore, other: MongoStore) -> None:
    await store.append_events({"a": [pending(0)], "b": [pending(0), pending(1)]})
    # The other replica writes a's seq 2 (its cache: next is 3), then this one takes seq 3
    # (after colliding at 2), so the other's cache is stale for a and cold for b and c.
    await other.append_events({"a": [pending(1)]})
    assert [r.seq for r in (await store.append_events({"a": [pending(9)]}))["a"]] == [3]
    res = await other.append_events(
        {"a": [pending(2), pending(3)], "b": [pending(2)], "c": [pending(0)]}
    )
    assert {cid: [r.seq for r in rs] for cid, rs in res.items()} == {
        "a": [4, 5],
        "b": [3],
        "c": [1],
    }
    for cid, last in (("a", 5), ("b", 3), ("c", 1)):
        frames = await store.events_since(cid, 0, None, 100)
        assert [f["seq"] for f in frames] == list(range(1, last + 1))
        assert all(f["conversationId"] == cid for f in frames)
    assert await store.last_seqs(["a", "b", "c", "d"]) == {"a": 5, "b": 3, "c": 1, "d": 0}


async def test_messages_insert_list_and_page(store: MongoStore) -> None:
    msgs = [msg("c1", s, f"m{s}") for s in range(1, 8)]
    await store.insert_messages(msgs)
    await store.insert_messages(msgs[:2])  # re-applying is harmless
    items, more = await store.list_messages("c1", None, None, 3)
    assert [m.seq for m in items] == [5, 6, 7] and more
    items, more = await store.list_messages("c1", None, 5, 3)
    assert [m.seq for m in items] == [2, 3, 4] and more
    items, more = await store.list_messages("c1", None, 2, 3)
    assert [m.seq for m in items] == [1] and not more
    items, more = await store.list_messages("c1", 4, None, 10)
    assert [m.seq for m in items] == [5, 6, 7] and not more
    items, more = await store.list_messages("c1", 2, 5, 10)
    assert [m.seq for m in items] == [3, 4] and not more
    got = await store.get_message("c1", msgs[0].id)
    assert got == msgs[0]
    assert await store.get_message("c2", msgs[0].id) is None


async def test_totals_are_atomic_under_concurrency(store: MongoStore, other: MongoStore) -> None:
    await store.insert_conversation(conv("c1", "u-a"))

    async def add(s: MongoStore, seq: int) -> None:
        last = LastMessage(
            content=f"m{seq}", role="user", created_at=now_ms(), message_id=f"m{seq}", seq=seq
        )
        await s.add_totals(
            {"c1": MessageTotals(messages=2, tokens=10, cost=0.5, last_message=last, max_seq=seq)}
        )

    await asyncio.gather(*(add(store if i % 2 else other, i) for i in range(1, 61)))
    got = await store.get_conversation("c1")
    assert got is not None
    assert got.total_messages == 120 and got.total_tokens == 600
    assert got.total_cost == pytest.approx(30.0)
    assert got.last_seq == 60
    assert got.last_message is not None and got.last_message.seq == 60


async def test_first_totals_of_many_conversations_from_two_replicas(
    store: MongoStore, other: MongoStore
) -> None:
    """Both replicas upsert the first totals document of the same conversations at once:
    the loser of each insert race is retried as an update, nothing is counted twice."""
    ids = [f"t{i}" for i in range(20)]
    for cid in ids:
        await store.insert_conversation(conv(cid, "u-a"))

    async def add(s: MongoStore, seq: int) -> None:
        await s.add_totals({cid: MessageTotals(messages=1, tokens=3, max_seq=seq) for cid in ids})

    await asyncio.gather(*(add(store if i % 2 else other, i) for i in range(1, 9)))
    got = await store.get_conversations(ids)
    assert sorted(got) == sorted(ids)
    for c in got.values():
        assert (c.total_messages, c.total_tokens, c.last_seq) == (8, 24, 8)
    page = await store.list_conversations(U, None, None, 50)
    assert {item["conversationId"]: item["totalMessages"] for item in page.items} == dict.fromkeys(
        ids, 8
    )


async def test_totals_written_on_the_conversation_itself_still_count(store: MongoStore) -> None:
    """Conversations stored before the totals moved to their own collection keep their
    totals; new ones add to them."""
    last = LastMessage(content="old", role="user", created_at=now_ms(), message_id="m3", seq=3)
    await store.insert_conversation(conv("old", "u-a"))
    await store.conversations.update_one(
        {"_id": "old"},
        {
            "$set": {
                "totalMessages": 2,
                "totalTokens": 5,
                "totalCost": 0.25,
                "lastSeq": 3,
                "lastMessage": last.model_dump(by_alias=True, exclude_none=True),
            }
        },
    )
    got = await store.get_conversation("old")
    assert got is not None and (got.total_messages, got.last_seq) == (2, 3)
    newer = LastMessage(content="new", role="user", created_at=now_ms(), message_id="m4", seq=4)
    await store.add_totals(
        {"old": MessageTotals(messages=1, tokens=1, cost=0.5, last_message=newer, max_seq=4)}
    )
    got = await store.get_conversation("old")
    assert got is not None
    assert (got.total_messages, got.total_tokens, got.last_seq) == (3, 6, 4)
    assert got.total_cost == pytest.approx(0.75)
    assert got.last_message is not None and got.last_message.content == "new"
    raw = await store.get_conversations(["old"], with_totals=False)
    assert raw["old"].total_messages == 2  # the sequencer's authorizing read skips totals
    one = await store.get_conversation("old", with_totals=False)
    assert one is not None and one.total_messages == 2


async def test_update_react_and_soft_delete(store: MongoStore) -> None:
    m = msg("c1", 1, "hello")
    await store.insert_messages([m])
    r = await store.react("c1", m.id, "👍", "u-a", remove=False)
    r = await store.react("c1", m.id, "👍", "u-a", remove=False)
    r = await store.react("c1", m.id, "👍", "u-b", remove=False)
    assert r is not None and r.reactions == {"👍": ["u-a", "u-b"]}
    r = await store.react("c1", m.id, "👍", "u-a", remove=True)
    r = await store.react("c1", m.id, "👍", "u-b", remove=True)
    assert r is not None and not r.reactions
    at = now_ms()
    e = await store.update_message("c1", m.id, {"content": "edited", "editedAt": at})
    assert e is not None and e.content == "edited" and e.edited_at == at
    d = await store.update_message("c1", m.id, {"deletedAt": at, "isActive": False, "content": ""})
    assert d is not None and d.deleted_at is not None and not d.is_active
    assert await store.update_message("c1", m.id, {"content": "again"}) is None
    assert await store.react("c1", m.id, "x", "u-a", remove=False) is None


async def test_message_documents_round_trip(store: MongoStore) -> None:
    m = msg(
        "c1",
        1,
        "",
        role="assistant",
        messageType="tool_call",
        toolCalls=[{"id": "t1", "type": "mcp_tool", "function": {"name": "f", "arguments": "{}"}}],
        usage={"promptTokens": 1, "completionTokens": 2, "totalTokens": 3},
        metadata={"nested": {"list": [1, "two", None]}},
        clientMessageId="cm-1",
    )
    await store.insert_messages([m])
    got = await store.get_message("c1", m.id)
    assert got == m
    assert (
        got is not None and got.role is Role.ASSISTANT and got.message_type is MessageType.TOOL_CALL
    )


async def test_tasks(store: MongoStore) -> None:
    task = {"_id": "task-1", "conversationId": "c1", "title": "t", "createdAt": now_ms()}
    await store.insert_task(task)
    assert await store.tasks.count_documents({"conversationId": "c1"}) == 1
