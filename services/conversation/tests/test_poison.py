"""One sender's unstorable value must never fail anybody else's message (issue 12, finding 3).

Real NATS, the real embedded store. First as an attacker sends it (raw request bodies with
values only a hand-written JSON can carry): refused by the contract before any batch. Then
with the contract bypassed (a message built without validation, handed to the sequencer on
a real store): the group commit isolates it and only its sender gets the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from parley_contract import jsonutil, subjects
from parley_contract.commands import ConversationCreate, MessageSend
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Message
from parley_conversation import domain
from parley_conversation.sequencer import Sequencer
from parley_conversation.service import ConversationService
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer

from .conftest import Request, fresh_store, user

CREATE = subjects.command(Event.CONVERSATION_CREATE)
SEND = subjects.command(Event.MESSAGE_SEND)
USERS = [f"u-{i:02d}" for i in range(40)]

# Hand-written request bodies: NaN and integers beyond 64 bits are not JSON orjson writes.
POISONS: list[tuple[str, str]] = [
    ('{"n": 9223372036854775808}', "metadata.n"),
    ('{"n": -9223372036854775809}', "metadata.n"),
    ('{"n": 9999999999999999999999999999}', "metadata.n"),
    ('{"x": NaN}', "metadata.x"),
    ('{"x": [1, Infinity]}', "metadata.x.1"),
    ('{"$where": "1"}', "metadata.$where"),
    ('{"a": {"b.c": 1}}', "metadata.a.b.c"),
    ('{"a\\u0000b": 1}', "metadata.a\x00b"),
    ('{"d": ' + "[" * 12 + "]" * 12 + "}", "metadata.d" + ".0" * 7),
    ('{"big": "' + "x" * 70_000 + '"}', "metadata"),
]


def raw_send(principal: dict[str, Any], cid: str, metadata_json: str, n: int) -> bytes:
    who = jsonutil.dumps(principal).decode()
    data = f'{{"conversationId": "{cid}", "content": "m{n}", "metadata": {metadata_json}}}'
    return f'{{"principal": {who}, "data": {data}}}'.encode()


async def test_poisoned_sends_are_refused_and_nobody_else_notices(
    service: ConversationService, request_: Request
) -> None:
    r = await request_(CREATE, {"participants": USERS}, user("u-alice"))
    assert r["success"], r
    cid = r["data"]["_id"]
    good = [
        request_(SEND, {"conversationId": cid, "content": f"hello {u}"}, user(u)) for u in USERS
    ]
    bad = [
        request_(SEND, None, raw=raw_send(user("u-alice"), cid, meta, i))
        for i, (meta, _) in enumerate(POISONS)
    ]
    replies = await asyncio.gather(*good, *bad)
    good_replies, bad_replies = replies[: len(USERS)], replies[len(USERS) :]
    assert all(r["success"] for r in good_replies), [r for r in good_replies if not r["success"]]
    for r, (meta, field) in zip(bad_replies, POISONS, strict=True):
        assert not r["success"], meta[:60]
        assert r["error"]["code"] == "VALIDATION_ERROR", (meta[:60], r)
        assert r["error"]["details"]["field"] == field, (meta[:60], r["error"])
    page = await request_(
        subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 500}, user("u-alice")
    )
    contents = sorted(m["content"] for m in page["data"]["items"])
    assert contents == sorted(f"hello {u}" for u in USERS)
    seqs = [m["seq"] for m in page["data"]["items"]]
    assert seqs == list(range(seqs[0], seqs[0] + len(USERS)))  # no gap, nothing else stored


async def test_an_edge_value_that_fits_is_stored(
    service: ConversationService, request_: Request
) -> None:
    r = await request_(CREATE, {}, user("u-alice"))
    cid = r["data"]["_id"]
    meta = '{"max": 9223372036854775807, "min": -9223372036854775808, "f": 1.5e308}'
    r = await request_(SEND, None, raw=raw_send(user("u-alice"), cid, meta, 1))
    assert r["success"], r
    assert r["data"]["metadata"] == {"max": 2**63 - 1, "min": -(2**63), "f": 1.5e308}


# ---------------------------------------------------------------- contract bypassed


@pytest.fixture
async def store(store_server: StoreServer) -> AsyncIterator[MongoStore]:
    async with fresh_store(store_server.url, "parley_poison") as s:
        yield s


async def _published(_subject: str, _payload: bytes) -> None:
    return None


@pytest.mark.parametrize(
    "poison",
    [{"n": 2**63}, {"s": "\ud800"}],
    ids=["int-beyond-64-bit", "lone-surrogate"],
)
async def test_the_group_commit_isolates_what_the_store_cannot_hold(
    store: MongoStore, poison: dict[str, Any]
) -> None:
    owner = Principal(id="u-owner", kind=PrincipalKind.USER)
    conv = domain.new_conversation(
        owner, ConversationCreate.model_validate({"participants": list(USERS)})
    )
    await store.insert_conversation(conv)
    seq = Sequencer(store, _published)

    def message(u: str, text: str) -> Message:
        p = Principal(id=u, kind=PrincipalKind.USER)
        cmd = MessageSend(conversation_id=conv.id, content=text)
        return domain.new_message(p, cmd)

    # Not validated (model_copy): what would reach the batch if the contract missed it.
    poisoned = message("u-05", "poison").model_copy(update={"metadata": poison})
    sends = [
        seq.send(Principal(id=u, kind=PrincipalKind.USER), message(u, f"hi {u}")) for u in USERS
    ]
    sends.insert(20, seq.send(Principal(id="u-05", kind=PrincipalKind.USER), poisoned))
    results = await asyncio.gather(*sends, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1, failed
    assert isinstance(failed[0], ParleyError) and failed[0].code is ErrorCode.VALIDATION_ERROR
    assert isinstance(results[20], ParleyError)
    stored, _ = await store.list_messages(conv.id, 0, None, 500)
    assert sorted(m.content for m in stored) == sorted(f"hi {u}" for u in USERS)
    assert [m.seq for m in stored] == list(range(1, len(USERS) + 1))  # no hole at the poison
    # The next batch goes on from there.
    res = await seq.send(owner, message("u-owner", "after"))
    assert res.seq == len(USERS) + 1
    await seq.drain()


async def test_history_numbers_out_of_range_are_validation_errors(
    service: ConversationService, request_: Request
) -> None:
    """The service's own check (a caller other than the gateway may ask it directly)."""
    r = await request_(CREATE, {}, user("u-alice"))
    cid = r["data"]["_id"]
    for field, value in (
        ("afterSeq", 2**63),
        ("beforeSeq", 2**63),
        ("afterSeq", -1),
        ("limit", 2**63),
    ):
        body = {"principal": user("u-alice"), "data": {"conversationId": cid, field: value}}
        r = await request_(subjects.QUERY_MESSAGES_LIST, None, raw=jsonutil.dumps(body))
        assert r["error"]["code"] == "VALIDATION_ERROR", (field, value, r)
        assert r["error"]["details"]["field"] == field
    since: dict[str, Any] = {"principal": user("u-alice"), "conversationId": cid}
    since["afterSeq"] = 2**63
    r = await request_(subjects.QUERY_EVENTS_SINCE, None, raw=jsonutil.dumps(since))
    assert r["error"]["code"] == "VALIDATION_ERROR", r
