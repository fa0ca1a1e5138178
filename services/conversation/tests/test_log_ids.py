"""The log keeps a key (clientMessageId) once per conversation by the entry's ``_id``
(idempotency.entry_id), with no index of its own: what a retry relies on, on a real store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import ASCENDING

from parley_contract.events import Event
from parley_contract.models import Message
from parley_conversation.domain import now_ms
from parley_conversation.entries import PendingEvent, log_entry
from parley_conversation.idempotency import entry_id
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer

from .conftest import fresh_store, message_pending


@pytest.fixture
async def store(store_server: StoreServer) -> AsyncIterator[MongoStore]:
    async with fresh_store(store_server.url, "parley_ids") as s:
        yield s


def message(cid: str, content: str, cmid: str | None) -> Message:
    """A message as a handler builds it: a fresh random id each time."""
    return Message.model_validate(
        {
            "_id": f"msg-{uuid.uuid4().hex[:20]}",
            "conversationId": cid,
            "role": "user",
            "content": content,
            "createdAt": now_ms(),
            "createdBy": "u-a",
            **({"clientMessageId": cmid} if cmid else {}),
        }
    )


def keyed_event(key: str | None) -> PendingEvent:
    return PendingEvent(Event.MESSAGE_UPDATED, lambda seq: {"seq": seq}, key)


async def test_a_retried_message_is_stored_once_under_the_id_its_key_gives(
    store: MongoStore, store_server: StoreServer
) -> None:
    other = MongoStore(store_server.url, store._db.name)  # another replica, cold cache
    try:
        first = (await store.append_events({"c1": [message_pending(message("c1", "hi", "k1"))]}))[
            "c1"
        ][0]
        # The retry: built again (another random id), on the other replica.
        again = (await other.append_events({"c1": [message_pending(message("c1", "hi!", "k1"))]}))[
            "c1"
        ]
    finally:
        await other.close()
    assert again[0].duplicate and again[0].seq == first.seq == 1
    assert again[0].frame == first.frame
    assert first.frame["data"]["_id"] == entry_id("message", "c1", "k1")
    assert await store.messages.count_documents({"conversationId": "c1"}) == 1
    # A message without a key keeps its own id, and is a new message each time.
    loose = message("c1", "free", None)
    res = (
        await store.append_events(
            {"c1": [message_pending(loose), message_pending(message("c1", "f", None))]}
        )
    )["c1"]
    assert [r.seq for r in res] == [2, 3] and res[0].frame["data"]["_id"] == loose.id


async def test_a_retry_at_the_seq_its_original_took_is_a_duplicate_not_a_collision(
    store: MongoStore, store_server: StoreServer
) -> None:
    """Replica B's cache points at the very seq where A stored the message B retries: the
    insert hits both indexes; that is the stored message (no collision, no extra round)."""
    other = MongoStore(store_server.url, store._db.name)
    collisions: list[int] = []
    other.on_collision = lambda: collisions.append(1)
    try:
        await other.append_events({"c1": [keyed_event(None), keyed_event(None)]})  # B: next 3
        first = (await store.append_events({"c1": [message_pending(message("c1", "hi", "k1"))]}))[
            "c1"
        ]
        assert first[0].seq == 3
        again = (await other.append_events({"c1": [message_pending(message("c1", "hi", "k1"))]}))[
            "c1"
        ]
        after = (await other.append_events({"c1": [keyed_event(None)]}))["c1"]
    finally:
        await other.close()
    assert again[0].duplicate and again[0].frame == first[0].frame
    assert collisions == [] and after[0].seq == 4


async def test_keyed_events_once_and_apart_from_messages(store: MongoStore) -> None:
    res = (await store.append_events({"c1": [keyed_event("~u-a:k"), keyed_event(None)]}))["c1"]
    dup = (await store.append_events({"c1": [keyed_event("~u-a:k")]}))["c1"][0]
    assert dup.duplicate and dup.frame == res[0].frame
    # A message whose clientMessageId is that key is a message of its own (ids differ by
    # kind), and each is found by its key.
    m = (await store.append_events({"c1": [message_pending(message("c1", "x", "~u-a:k"))]}))["c1"][
        0
    ]
    assert not m.duplicate and m.seq == 3
    found = await store.frames_by_client_ids({"c1": ["~u-a:k", "nope"], "c2": ["~u-a:k"]})
    assert found == {("c1", "~u-a:k"): res[0].frame}  # the keyed command's event first
    docs = await store.messages.find({"clientMessageId": "~u-a:k"}).to_list()
    assert sorted(d["_id"] for d in docs) == sorted(
        [entry_id("event", "c1", "~u-a:k"), entry_id("message", "c1", "~u-a:k")]
    )


async def test_the_log_has_no_client_message_id_index(store_server: StoreServer) -> None:
    """Only _id and (conversationId, seq); the older version's index is dropped at start."""
    db = f"parley_ids_{uuid.uuid4().hex[:12]}"
    s = MongoStore(store_server.url, db)
    try:
        await s.messages.create_index(
            [("conversationId", ASCENDING), ("clientMessageId", ASCENDING)],
            unique=True,
            partialFilterExpression={"clientMessageId": {"$type": "string"}},
        )
        await s.init()
        info = await s.messages.index_information()
        assert sorted(info) == ["_id_", "conversationId_1_seq_1"]
        assert info["conversationId_1_seq_1"].get("unique") is True
    finally:
        await s._client.drop_database(db)
        await s.close()


def test_a_keyed_message_must_carry_the_id_of_its_key() -> None:
    m = message("c1", "x", "k1")
    as_built = PendingEvent(
        Event.MESSAGE_NEW, None, "k1", message=lambda seq: m.model_copy(update={"seq": seq})
    )
    with pytest.raises(ValueError, match="entry_id"):
        log_entry("c1", 1, as_built)
    doc, frame = log_entry("c1", 1, message_pending(m))
    assert doc["_id"] == frame["data"]["_id"] == entry_id("message", "c1", "k1")
