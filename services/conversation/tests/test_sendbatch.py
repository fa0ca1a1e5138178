"""Batched message:sends (issue 16): one request for a connection's queued sends to one
conversation answers each as its own message:send would, stores them in their order, and
stays exactly-once when sent again; on the real NATS and the real embedded store."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_contract.internal import MAX_SEND_BATCH
from parley_contract.limits import MAX_CONTENT_CHARS
from parley_contract.routes import ROUTES, send_batch_subject
from parley_conversation.service import ConversationService

from .calls import ALICE, BOB, MALLORY, create, list_all
from .conftest import Request, request_reply

SEND = ROUTES[Event.MESSAGE_SEND]


def batch_body(cid: str, items: list[tuple[dict[str, Any], str]], who: Any = ALICE) -> bytes:
    return jsonutil.dumps(
        {
            "principal": who,
            "conversationId": cid,
            "items": [{"data": d, "idempotencyKey": k} for d, k in items],
            "instanceId": "gw-test",
        }
    )


async def send_batch(
    nc: Client, cid: str, items: list[tuple[dict[str, Any], str]], who: Any = ALICE
) -> list[dict[str, Any]]:
    r = await request_reply(nc, send_batch_subject(cid), batch_body(cid, items, who))
    assert r["success"], r
    results: list[dict[str, Any]] = r["data"]["results"]
    assert len(results) == len(items)
    return results


async def single(request_: Request, data: dict[str, Any], key: str, who: Any = ALICE) -> Any:
    body = jsonutil.dumps({"principal": who, "data": data, "idempotencyKey": key})
    return await request_(SEND.subject_for(data), None, raw=body)


async def test_a_batch_is_stored_in_order_and_each_answered(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    cid = (await create(request_))["_id"]
    items = [({"conversationId": cid, "content": f"m{i}"}, f"k{i}") for i in range(20)]
    items[3][0]["clientMessageId"] = "mine-3"
    results = await send_batch(nc, cid, items)
    assert all(r["success"] for r in results), results
    seqs = [r["data"]["seq"] for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + 20))  # consecutive, in the items' order
    assert [r["data"]["content"] for r in results] == [f"m{i}" for i in range(20)]
    # Each keyed as its single send is: the clientMessageId, else the idempotency key.
    cmids = [r["data"]["clientMessageId"] for r in results]
    assert cmids[3] == "mine-3" and cmids[4] == "k4"
    stored = [m for m in await list_all(request_, cid) if m["content"].startswith("m")]
    assert [m["content"] for m in stored] == [f"m{i}" for i in range(20)]
    # The same reply as a single send of the same message (the shape, not the seq and id).
    one = await single(request_, {"conversationId": cid, "content": "solo"}, "k-solo")
    assert one["success"], one
    assert set(one["data"]) == set(results[0]["data"])


async def test_a_bad_message_fails_alone_with_its_single_error(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    cid = (await create(request_))["_id"]
    bad = [
        {"conversationId": cid, "content": "x", "bogus": 1},
        {"conversationId": cid, "content": 5},
        {"conversationId": cid, "content": "x" * (MAX_CONTENT_CHARS + 1)},
        {"conversationId": cid, "role": "nonsense"},
    ]
    for n, data in enumerate(bad):
        items = [
            ({"conversationId": cid, "content": f"a{n}"}, f"a{n}"),
            (data, f"bad{n}"),
            ({"conversationId": cid, "content": f"b{n}"}, f"b{n}"),
        ]
        results = await send_batch(nc, cid, items)
        want = await single(request_, data, f"bad-single{n}")
        assert not want["success"]
        assert not results[1]["success"] and results[1]["error"] == want["error"], results[1]
        assert results[0]["success"] and results[2]["success"]
        assert results[2]["data"]["seq"] == results[0]["data"]["seq"] + 1  # no seq for it
    # Someone who may not post: each item gets the single send's FORBIDDEN.
    items = [({"conversationId": cid, "content": "hi"}, f"m{i}") for i in range(3)]
    results = await send_batch(nc, cid, items, MALLORY)
    want = await single(request_, items[0][0], "m-single", MALLORY)
    assert [r["error"]["code"] for r in results] == [want["error"]["code"]] * 3


async def test_a_batch_sent_again_stores_each_message_once(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    """The gateway's failover sends the same bytes again (another replica, or the same one
    after a timeout): every message is answered as stored the first time, nothing twice."""
    cid = (await create(request_))["_id"]
    items = [({"conversationId": cid, "content": f"m{i}"}, f"k{i}") for i in range(5)]
    first = await send_batch(nc, cid, items[:3])  # the first run stored some of them
    again = await send_batch(nc, cid, items)
    assert [r["data"]["_id"] for r in again[:3]] == [r["data"]["_id"] for r in first]
    assert [r["data"]["seq"] for r in again[:3]] == [r["data"]["seq"] for r in first]
    assert again[3]["data"]["seq"] == first[2]["data"]["seq"] + 1
    third = await send_batch(nc, cid, items)
    assert [r["data"]["seq"] for r in third] == [r["data"]["seq"] for r in again]
    stored = [m for m in await list_all(request_, cid) if m["content"].startswith("m")]
    assert [m["content"] for m in stored] == [f"m{i}" for i in range(5)]
    # A single retry of a batched message is the same message too.
    one = await single(request_, items[1][0], "k1")
    assert one["data"]["_id"] == first[1]["data"]["_id"]
    # Someone else reusing a key of alice's gets CONFLICT, as a single send does.
    bob = await send_batch(nc, cid, [({"conversationId": cid, "content": "m1"}, "k1")], BOB)
    assert bob[0]["error"]["code"] == "CONFLICT"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        {"conversationId": "c", "items": []},
        {"conversationId": "c", "items": [{"data": {}, "idempotencyKey": "k"}] * 65},
        {"conversationId": "c", "items": [{"data": {}}]},
        {"conversationId": "c", "items": [{"data": [], "idempotencyKey": "k"}]},
        {"conversationId": "c", "items": [{"data": {}, "idempotencyKey": "k"}], "extra": 1},
        {"items": [{"data": {}, "idempotencyKey": "k"}]},
    ],
)
async def test_bad_batches_get_validation_errors(
    service: ConversationService, nc: Client, body: Any
) -> None:
    assert MAX_SEND_BATCH < 65
    if isinstance(body, dict):
        body = {"principal": ALICE, **body}
    raw = body if isinstance(body, bytes) else jsonutil.dumps(body)
    r = await request_reply(nc, send_batch_subject("c"), raw)
    assert not r["success"] and r["error"]["code"] == "VALIDATION_ERROR", r


async def test_an_item_of_another_conversation_is_refused(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    cid = (await create(request_))["_id"]
    other = (await create(request_))["_id"]
    items = [
        ({"conversationId": cid, "content": "a"}, "a"),
        ({"conversationId": other, "content": "b"}, "b"),
    ]
    results = await send_batch(nc, cid, items)
    assert results[0]["success"]
    assert results[1]["error"]["code"] == "VALIDATION_ERROR"
    assert results[1]["error"]["details"]["field"] == "conversationId"


async def test_only_the_partition_subject_serves_batches(
    service: ConversationService, nc: Client
) -> None:
    """A batch has no plain subject: a gateway whose batch finds no responder (no owner
    now, or an older replica) sends the messages one by one."""
    assert not send_batch_subject("c").startswith(subjects.partition_commands(0)[:-1])
    assert send_batch_subject("c") != SEND.subject_for({"conversationId": "c"})
