"""The totals write (totals_store.py): every conversation's totals in one commit where the
store has transactions, the bulk write of before where it has none, the same totals either
way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from parley_contract.commands import ConversationCreate
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import LastMessage
from parley_conversation import domain
from parley_conversation.domain import now_ms
from parley_conversation.entries import MessageTotals
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer

from .conftest import fresh_store

U = Principal(id="u-t", kind=PrincipalKind.USER)
IDS = [f"t{i}" for i in range(5)]


@pytest.fixture
async def store(store_server: StoreServer) -> AsyncIterator[MongoStore]:
    async with fresh_store(store_server.url, "parley_totals") as s:
        for cid in IDS:
            await s.insert_conversation(
                domain.new_conversation(U, ConversationCreate(conversation_id=cid))
            )
        yield s


def totals(seq: int) -> dict[str, MessageTotals]:
    last = LastMessage(
        content=f"m{seq}", role="user", created_at=now_ms(), message_id=f"m{seq}", seq=seq
    )
    return {
        cid: MessageTotals(messages=2, tokens=3, cost=0.5, last_message=last, max_seq=seq)
        for cid in IDS
    }


async def assert_totals(store: MongoStore, messages: int, last_seq: int) -> None:
    got = await store.get_conversations(IDS)
    assert sorted(got) == IDS
    for c in got.values():
        tokens = messages * 3 // 2
        assert (c.total_messages, c.total_tokens, c.last_seq) == (messages, tokens, last_seq)
        assert c.last_message is not None and c.last_message.content == f"m{last_seq}"


async def test_totals_of_many_conversations_are_one_transaction(store: MongoStore) -> None:
    await store.add_totals(totals(2))
    await store.add_totals(totals(4))
    await store.add_totals(totals(3))  # a late one: sums count, lastMessage stays at 4
    assert store.totals_store.transactions is True  # the embedded store has them
    await assert_totals(store, 6, 4)


async def test_a_store_without_transactions_gets_the_bulk_write(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A standalone mongod refuses transactions (IllegalOperation): the totals are written
    as before, one update each, and transactions are not tried again."""
    tried: list[int] = []

    def no_sessions(*_a: Any, **_k: Any) -> Any:
        tried.append(1)
        raise OperationFailure(
            "Transaction numbers are only allowed on a replica set member or mongos", code=20
        )

    monkeypatch.setattr(store._client, "start_session", no_sessions)
    await store.add_totals(totals(2))
    await store.add_totals(totals(4))
    assert store.totals_store.transactions is False
    assert tried == [1]
    await assert_totals(store, 4, 4)


async def test_other_failures_of_the_transaction_are_raised(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only 'no transactions here' falls back; any other error reaches the totals writer
    (which retries it), never half-applied totals counted twice."""
    await store.add_totals(totals(1))

    def broken(*_a: Any, **_k: Any) -> Any:
        raise OperationFailure("not primary", code=10107)

    monkeypatch.setattr(store._client, "start_session", broken)
    with pytest.raises(OperationFailure):
        await store.add_totals(totals(2))
    monkeypatch.undo()
    await assert_totals(store, 2, 1)
