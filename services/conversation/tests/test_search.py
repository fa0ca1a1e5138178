"""Search (parley_conversation.search) on the real store: only the caller's conversations,
titles and message text, hostile queries, paging."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Conversation, Message, Participant, ParticipantRole
from parley_contract.queries import SearchQuery
from parley_conversation.domain import now_ms
from parley_conversation.search import search, snippet
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer
from parley_devstack.testing import real_mongodb_url

from .conftest import fresh_store

BACKENDS = ["embedded", pytest.param("mongodb", marks=pytest.mark.mongodb)]
ALICE = Principal(id="u-alice", kind=PrincipalKind.USER)
BOB = Principal(id="u-bob", kind=PrincipalKind.USER)
AGENT = Principal(id="agent-x", kind=PrincipalKind.AGENT)


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, store_server: StoreServer
) -> AsyncIterator[MongoStore]:
    url = store_server.url if request.param == "embedded" else real_mongodb_url()
    if url is None:
        pytest.skip("MONGODB_URL is not set: no real MongoDB to check against")
    async with fresh_store(url, "parley_search") as s:
        yield s


async def room(
    store: MongoStore,
    cid: str,
    title: str,
    *users: str,
    agent: str | None = None,
    offset_ms: int = 0,
) -> None:
    at = now_ms() + timedelta(milliseconds=offset_ms)
    parts = [Participant(user_id=u, role=ParticipantRole.USER, joined_at=at) for u in users]
    await store.insert_conversation(
        Conversation(
            id=cid,
            conversation_id=cid,
            title=title,
            agent_id=agent,
            participants=parts,
            created_at=at,
            updated_at=at,
            created_by=users[0],
        )
    )


async def say(
    store: MongoStore, cid: str, seq: int, content: str, offset_ms: int = 0, **extra: Any
) -> str:
    mid = f"msg-{uuid.uuid4().hex[:10]}"
    at = now_ms() + timedelta(milliseconds=offset_ms)
    await store.insert_messages(
        [
            Message.model_validate(
                {
                    "_id": mid,
                    "conversationId": cid,
                    "role": "user",
                    "content": content,
                    "seq": seq,
                    "createdAt": at,
                    "createdBy": "u-alice",
                    "name": "Alice",
                    **extra,
                }
            )
        ]
    )
    return mid


async def find(store: MongoStore, who: Principal, q: str, **extra: Any) -> dict[str, Any]:
    return await search(store, who, SearchQuery.model_validate({"q": q, **extra}))


async def test_finds_in_ones_own_conversations_only(store: MongoStore) -> None:
    await room(store, "c-mine", "Holiday plans", "u-alice")
    await room(store, "c-theirs", "Secret holiday", "u-bob")
    mine = await say(store, "c-mine", 1, "The blue lagoon is lovely in May")
    await say(store, "c-theirs", 1, "The blue lagoon, but secretly")
    page = await find(store, ALICE, "BLUE lagoon")
    assert page["mode"] == store.search_mode
    assert [(h["kind"], h["conversationId"]) for h in page["items"]] == [("message", "c-mine")]
    hit = page["items"][0]
    assert hit["message"]["_id"] == mine and hit["message"]["seq"] == 1
    assert hit["title"] == "Holiday plans"
    assert hit["message"]["snippet"] == "The blue lagoon is lovely in May"
    # Titles: Alice's conversation, not Bob's.
    page = await find(store, ALICE, "holiday")
    assert [(h["kind"], h["conversationId"]) for h in page["items"]] == [("conversation", "c-mine")]
    # Bob sees his, not Alice's; a stranger nothing.
    page = await find(store, BOB, "blue lagoon")
    assert [h["conversationId"] for h in page["items"]] == ["c-theirs"]
    stranger = Principal(id="u-mallory", kind=PrincipalKind.USER)
    assert (await find(store, stranger, "lagoon"))["items"] == []


async def test_left_deleted_and_non_message_entries_are_not_found(store: MongoStore) -> None:
    await room(store, "c-1", "Room", "u-alice", "u-bob")
    await say(store, "c-1", 1, "needle one")
    await say(store, "c-1", 2, "needle gone", deletedAt=now_ms())
    page = await find(store, BOB, "needle")
    assert [h["message"]["seq"] for h in page["items"]] == [1]
    # Bob leaves: the conversation is no longer his to search.
    conv = await store.get_conversation("c-1", with_totals=False)
    assert conv is not None
    left = [
        p.model_copy(update={"left_at": now_ms()}) if p.user_id == "u-bob" else p
        for p in conv.participants
    ]
    assert await store.update_conversation(
        conv, conv.model_copy(update={"participants": left, "updated_at": now_ms()})
    )
    assert (await find(store, BOB, "needle"))["items"] == []
    # A deleted conversation is out of everyone's search.
    conv = await store.get_conversation("c-1", with_totals=False)
    assert conv is not None
    assert await store.update_conversation(
        conv, conv.model_copy(update={"is_active": False, "updated_at": now_ms()})
    )
    assert (await find(store, ALICE, "needle"))["items"] == []


async def test_an_agent_searches_the_conversations_it_answers_in(store: MongoStore) -> None:
    await room(store, "c-a", "Agent room", "u-alice", agent="agent-x")
    await say(store, "c-a", 1, "ask the agent about kites")
    page = await find(store, AGENT, "kites")
    assert [h["conversationId"] for h in page["items"]] == ["c-a"]


@pytest.mark.parametrize(
    "q", [".*", "(a+)+$", "[", "\\", "a|b", "^", "$where", '{"$gt": ""}', "x" * 200]
)
async def test_regex_metacharacters_match_themselves(store: MongoStore, q: str) -> None:
    if store.search_mode == "text":
        pytest.skip("MongoDB's text search matches words: punctuation alone matches nothing")
    await room(store, "c-m", "Meta", "u-alice")
    await say(store, "c-m", 1, "plain words only")
    await say(store, "c-m", 2, f"literal {q} here")
    page = await find(store, ALICE, q)
    assert [h["message"]["seq"] for h in page["items"]] == [2]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "a", "limit": 0}, "limit"),
        ({"q": "a", "limit": 51}, "limit"),
        ({"q": "a", "cursor": "not-a-cursor"}, "cursor"),
        ({"q": "a", "cursor": "bm8="}, "cursor"),
    ],
)
async def test_bad_queries_are_refused(store: MongoStore, data: dict[str, Any], field: str) -> None:
    with pytest.raises((ParleyError, ValueError)) as info:
        await search(store, ALICE, SearchQuery.model_validate(data))
    if isinstance(info.value, ParleyError):
        assert info.value.code is ErrorCode.VALIDATION_ERROR
        assert (info.value.details or {}).get("field") == field
    else:
        assert field in str(info.value)


async def test_pages_newest_first_without_repeats(store: MongoStore) -> None:
    await room(store, "c-p", "Paging echo", "u-alice", offset_ms=-10_000)
    ids = [await say(store, "c-p", i, f"echo {i}", offset_ms=i) for i in range(1, 8)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await find(store, ALICE, "echo", limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [
            h["message"]["_id"] if h["kind"] == "message" else h["conversationId"]
            for h in page["items"]
        ]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    # The seven messages, newest first, then the conversation (titled "Paging echo", older).
    assert seen == [*reversed(ids), "c-p"]


def test_snippet_is_the_text_around_the_match() -> None:
    text = "a" * 300 + " NEEDLE " + "b" * 300
    cut = snippet(text, "needle")
    assert "NEEDLE" in cut and cut.startswith("…") and cut.endswith("…")
    assert len(cut) <= 162
    assert snippet("short text", "x") == "short text"


async def test_a_store_refusing_the_text_indexes_falls_back_to_regex(
    store_server: StoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose probe says "text indexes" but that refuses the declared ones (here the
    embedded store, told the probe passed) starts anyway and searches by regex."""

    async def yes(self: MongoStore) -> bool:
        return True

    monkeypatch.setattr(MongoStore, "_has_text_indexes", yes)
    db = f"parley_search_{uuid.uuid4().hex[:12]}"
    s = MongoStore(store_server.url, db)
    try:
        await s.init()
        assert s.search_mode == "regex"
        await room(s, "c-f", "Fallback", "u-alice")
        await say(s, "c-f", 1, "still found")
        page = await find(s, ALICE, "still")
        assert [h["message"]["seq"] for h in page["items"]] == [1]
    finally:
        await s._client.drop_database(db)
        await s.close()
