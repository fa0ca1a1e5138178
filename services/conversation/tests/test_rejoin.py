"""The batched rejoin of resumed sessions (issue 16, reconnect storm): one request for many
principals answers each of them exactly as its own conversation:join would, on the real
NATS and the real embedded store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_contract.internal import MAX_REJOIN_PRINCIPALS
from parley_contract.routes import REJOIN_SUBJECT
from parley_conversation import cursors
from parley_conversation import rejoin as rejoin_module
from parley_conversation.service import ConversationService
from parley_devstack.servers import NatsServer, StoreServer

from .conftest import Request, request_reply, service_principal, settings_for, user

CREATE = subjects.command(Event.CONVERSATION_CREATE)
JOIN = subjects.command(Event.CONVERSATION_JOIN)
SEND = subjects.command(Event.MESSAGE_SEND)
READ = subjects.command(Event.CONVERSATION_READ)
UPDATE = subjects.command(Event.CONVERSATION_UPDATE)

ALICE, BOB, CAROL, DAVE = user("u-alice"), user("u-bob"), user("u-carol"), user("u-dave")
MALLORY = user("u-mallory")


async def ok(request_: Request, subject: str, data: Any, who: dict[str, Any]) -> Any:
    r = await request_(subject, data, who)
    assert r["success"], r
    return r["data"]


async def rejoin(nc: Client, cid: Any, principals: list[Any]) -> dict[str, Any]:
    body = {"conversationId": cid, "principals": principals, "instanceId": "gw-test"}
    return await request_reply(nc, REJOIN_SUBJECT, jsonutil.dumps(body))


async def _room(request_: Request) -> tuple[str, int]:
    """alice's conversation with bob, carol (removed again) and dave; bob read some of it."""
    conv = await ok(request_, CREATE, {"participants": ["u-bob", "u-carol", "u-dave"]}, ALICE)
    cid = conv["_id"]
    seqs = []
    for i, who in enumerate([ALICE, BOB, ALICE, DAVE, ALICE]):
        m = await ok(request_, SEND, {"conversationId": cid, "content": f"m{i}"}, who)
        seqs.append(m["seq"])
    await ok(request_, READ, {"conversationId": cid, "seq": seqs[2]}, BOB)
    await ok(request_, UPDATE, {"conversationId": cid, "removeParticipants": ["u-carol"]}, ALICE)
    return cid, seqs[2]


def as_join(data: dict[str, Any], member: dict[str, Any]) -> dict[str, Any]:
    """One principal's part of a batched rejoin's answer, shaped as its single join's."""
    return {
        "conversation": data["conversation"],
        "lastSeq": data["lastSeq"],
        "epoch": data["epoch"],
        "cursors": data["cursors"],
        "unreadCount": member["unreadCount"],
        "readSeq": member["readSeq"],
    }


async def _compare(nc: Client, request_: Request, cid: str, who: list[Any]) -> None:
    """Each principal's part of the batched answer is its single join's answer."""
    batch = await rejoin(nc, cid, who)
    assert batch["success"], batch
    data = batch["data"]
    assert len(data["members"]) == len(who)
    for p, member in zip(who, data["members"], strict=True):
        single = await request_(JOIN, {"conversationId": cid}, p)
        if not single["success"]:
            assert member["ok"] is False, (p, member)
            assert member["error"]["code"] == single["error"]["code"], (p, member)
            continue
        assert member["ok"] is True, (p, member)
        assert as_join(data, member) == single["data"], p


async def test_each_principal_gets_its_own_join(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    cid, bob_read = await _room(request_)
    who = [ALICE, BOB, CAROL, MALLORY, DAVE, BOB, service_principal()]
    await _compare(nc, request_, cid, who)
    data = (await rejoin(nc, cid, who))["data"]
    codes = [m["error"]["code"] if not m["ok"] else "ok" for m in data["members"]]
    # carol was removed before: FORBIDDEN as a single join, so is a stranger.
    assert codes == ["ok", "ok", "FORBIDDEN", "FORBIDDEN", "ok", "ok", "ok"]
    bob = data["members"][1]
    assert bob["readSeq"] == bob_read and bob["unreadCount"] == 2  # dave's and alice's after it
    assert data["members"][4]["unreadCount"] == 4  # dave's own message does not count
    names = {x.get("userId"): x.get("name") for x in data["conversation"]["participants"]}
    assert names["u-bob"] == "u-bob"


async def test_unread_past_one_scan_is_counted_alone(
    service: ConversationService, request_: Request, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A principal whose unread window reaches past the shared scan (from the lowest read
    cursor) is counted on its own, the same as its single join."""
    cid, _ = await _room(request_)
    monkeypatch.setattr(cursors, "SCAN_CAP", 3)
    await _compare(nc, request_, cid, [ALICE, BOB, DAVE])


async def test_nobody_admitted_and_unknown_conversations(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    cid, _ = await _room(request_)
    r = await rejoin(nc, cid, [CAROL, MALLORY])
    assert r["success"]
    assert [m["error"]["code"] for m in r["data"]["members"]] == ["FORBIDDEN", "FORBIDDEN"]
    assert r["data"]["conversation"] is None
    r = await rejoin(nc, "conv-nope", [ALICE])
    assert r["data"]["members"][0]["error"]["code"] == "FORBIDDEN"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        {"conversationId": "c", "principals": []},
        {"conversationId": "a.b", "principals": [ALICE]},
        {"conversationId": "c", "principals": [{"id": "x", "kind": "robot"}]},
        {"conversationId": "c", "principals": [ALICE] * (MAX_REJOIN_PRINCIPALS + 1)},
        {"conversationId": "c", "principals": [ALICE], "extra": 1},
        {"principals": [ALICE]},
    ],
)
async def test_bad_requests_get_validation_errors(
    service: ConversationService, nc: Client, body: Any
) -> None:
    raw = body if isinstance(body, bytes) else jsonutil.dumps(body)
    r = await request_reply(nc, REJOIN_SUBJECT, raw)
    assert not r["success"] and r["error"]["code"] == "VALIDATION_ERROR", r


def in_flight(svc: ConversationService) -> float | None:
    return svc.metrics.registry.get_sample_value("parley_conversation_in_flight")


async def test_batches_arriving_together_share_one_set_of_reads(
    service: ConversationService, request_: Request, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one group's reads of a conversation run, the batches that arrive for it (from
    other gateways) wait and share the next group; each gets its own principals' answers."""
    groups: list[list[str]] = []
    release, entered = asyncio.Event(), asyncio.Event()
    real = rejoin_module._answer_many

    async def answer(svc: ConversationService, round_: dict[str, list[Any]]) -> Any:
        groups.extend([p.id for p in principals] for principals in round_.values())
        entered.set()
        await release.wait()
        return await real(svc, round_)

    monkeypatch.setattr(rejoin_module, "_answer_many", answer)
    cid, _ = await _room(request_)
    first = asyncio.create_task(rejoin(nc, cid, [ALICE]))
    await asyncio.wait_for(entered.wait(), 10)
    later = [
        asyncio.create_task(rejoin(nc, cid, [BOB, CAROL])),
        asyncio.create_task(rejoin(nc, cid, [DAVE])),
    ]
    while (in_flight(service) or 0) < 3:  # noqa: ASYNC110 (both received, waiting)
        await asyncio.sleep(0.01)
    release.set()
    a, bc, d = await first, *await asyncio.gather(*later)
    assert groups == [["u-alice"], ["u-bob", "u-carol", "u-dave"]]
    assert [m["ok"] for m in bc["data"]["members"]] == [True, False]
    assert [m["ok"] for m in d["data"]["members"]] == [True]
    assert bc["data"]["lastSeq"] == d["data"]["lastSeq"] == a["data"]["lastSeq"]
    single = await request_(JOIN, {"conversationId": cid}, DAVE)
    assert d["data"]["members"][0]["unreadCount"] == single["data"]["unreadCount"]


def count_conversation_reads(
    svc: ConversationService, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    reads: list[str] = []
    real, real_many = svc.store.get_conversation, svc.store.get_conversations

    async def get_conversation(cid: str, *, with_totals: bool = True) -> Any:
        reads.append(cid)
        return await real(cid, with_totals=with_totals)

    async def get_conversations(ids: Any, *, with_totals: bool = True) -> Any:
        if with_totals:  # the rejoin's (the sequencer's authorization reads without)
            reads.extend(ids)
        return await real_many(ids, with_totals=with_totals)

    monkeypatch.setattr(svc.store, "get_conversation", get_conversation)
    monkeypatch.setattr(svc.store, "get_conversations", get_conversations)
    return reads


async def test_later_batches_share_the_conversation_read_until_the_log_moves(
    service: ConversationService, request_: Request, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storm's members come back a few at a time: the next batches of a conversation use
    the conversation read of the first while the log ends at the same seq. A removal appends
    to the log: the batch after it reads the conversation again, and the removed principal
    gets FORBIDDEN and nothing of the conversation."""
    cid, _ = await _room(request_)
    reads = count_conversation_reads(service, monkeypatch)
    first = (await rejoin(nc, cid, [ALICE]))["data"]
    await _compare(nc, request_, cid, [BOB, DAVE])  # single joins read it themselves
    assert reads.count(cid) == 3  # one for the first batch, one per single join
    again = (await rejoin(nc, cid, [BOB]))["data"]
    assert reads.count(cid) == 3
    single = (await request_(JOIN, {"conversationId": cid}, BOB))["data"]
    assert again["conversation"] == single["conversation"]  # with the names stored since
    assert again["lastSeq"] == first["lastSeq"] == single["lastSeq"]

    await ok(request_, UPDATE, {"conversationId": cid, "removeParticipants": ["u-dave"]}, ALICE)
    after = (await rejoin(nc, cid, [DAVE]))["data"]
    assert reads.count(cid) == 6  # the single join's, the update's, then this batch's
    assert after["members"][0]["ok"] is False
    assert after["members"][0]["error"]["code"] == "FORBIDDEN"
    assert after["conversation"] is None and after["lastSeq"] == 0 and "cursors" not in after
    both = (await rejoin(nc, cid, [ALICE, DAVE]))["data"]
    assert [m["ok"] for m in both["members"]] == [True, False]
    assert both["lastSeq"] > first["lastSeq"]
    dave = [x for x in both["conversation"]["participants"] if x.get("userId") == "u-dave"]
    assert dave and dave[0].get("leftAt")  # the conversation as it is now


async def test_a_shared_read_serves_at_most_its_time(
    service: ConversationService, request_: Request, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, _ = await _room(request_)
    monkeypatch.setattr(rejoin_module, "SHARED_SECONDS", 0.0)
    reads = count_conversation_reads(service, monkeypatch)
    for who in (ALICE, BOB):
        assert (await rejoin(nc, cid, [who]))["data"]["members"][0]["ok"] is True
    assert reads.count(cid) == 2


async def test_services_alone(service: ConversationService, request_: Request, nc: Client) -> None:
    """lastSeq comes from the unread scan when it reaches the end of the log; with nobody
    to count (services only) it is read on its own: still the join's."""
    cid, _ = await _room(request_)
    await _compare(nc, request_, cid, [service_principal()])
    await _compare(nc, request_, cid, [service_principal(), ALICE])


def test_shared_reads_do_not_outlive_their_time() -> None:
    """After a storm its entries go with the next one put, and there are never more than
    the size (the least recently used go)."""
    now = [time.monotonic()]
    shared = rejoin_module.SharedReads(size=5, timer=lambda: now[0])
    for i in range(5):
        shared.put(f"d{i}", rejoin_module._Shared(1, None, 0, now[0]))
    assert len(shared) == 5 and shared.get("d0", 1) is not None
    assert shared.get("d0", 2) is None  # the log moved on: gone
    shared.put("e", rejoin_module._Shared(1, None, 0, now[0]))
    shared.put("f", rejoin_module._Shared(1, None, 0, now[0]))
    assert len(shared) == 5 and shared.get("d1", 1) is None and shared.get("e", 1) is not None
    # An entry's time runs from its read (``at``), not from when it was put.
    now[0] += rejoin_module.SHARED_SECONDS - 1
    read_before = now[0] - rejoin_module.SHARED_SECONDS  # a read that took that long
    shared.put("g", rejoin_module._Shared(1, None, 0, read_before))
    assert shared.get("g", 1) is None and shared.get("f", 1) is not None
    now[0] += 2
    shared.put("h", rejoin_module._Shared(1, None, 0, now[0]))
    assert len(shared) == 1 and shared.get("h", 1) is not None  # the storm's entries went


async def test_a_rejoin_received_before_a_stop_is_answered(
    nats_server: NatsServer,
    store_server: StoreServer,
    db_name: str,
    nc: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batched rejoins have a subscription of their own (not FastStream's): in place
    when start() returns, drained by stop() — a rejoin received before the stop is still
    answered, one sent after it reaches nobody."""
    entered, release = asyncio.Event(), asyncio.Event()
    real = rejoin_module._answer_many

    async def answer(svc: ConversationService, round_: dict[str, list[Any]]) -> Any:
        entered.set()
        await release.wait()
        return await real(svc, round_)

    monkeypatch.setattr(rejoin_module, "_answer_many", answer)
    svc = ConversationService(settings_for(nats_server.url, store_server.url, db_name))
    await svc.start()
    stopping: asyncio.Task[None] | None = None
    try:
        asking = asyncio.create_task(rejoin(nc, "conv-nope", [ALICE]))
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.create_task(svc.stop())
        await asyncio.sleep(0.3)
        assert not asking.done() and not stopping.done()  # the stop waits for it
        release.set()
        reply = await asyncio.wait_for(asking, 10)
        assert reply["success"], reply
        assert reply["data"]["members"][0]["error"]["code"] == "FORBIDDEN"
        await asyncio.wait_for(stopping, 15)
        with pytest.raises(nats.errors.NoRespondersError):
            await rejoin(nc, "conv-nope", [ALICE])
    finally:
        release.set()
        if stopping is None:
            await svc.stop()
        elif not stopping.done():
            await stopping
