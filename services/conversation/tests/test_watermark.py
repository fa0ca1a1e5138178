"""Delivery as a per-conversation watermark (protocol 3.6, issue 16): which messages read
``delivered``, in every read that returns stored messages, on the real NATS and store; and
the watermark's rule itself against every principal's cursor."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client
from pymongo.errors import AutoReconnect

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_contract.ids import new_id
from parley_contract.partitions import PARTITIONS, partition_of
from parley_conversation import delivery, totals_writer
from parley_conversation.domain.delivered import Mark, mark_of, status
from parley_conversation.service import ConversationService

from .calls import events_since
from .conftest import LEASE, Request, StartReplica
from .test_affinity import create, owned, send, split_evenly
from .test_receipts import ALICE, BOB, CREATE, SEND, Frames, ok

EDIT = subjects.command(Event.MESSAGE_EDIT)


# ---------------------------------------------------------------- the rule


def truth(cursors: dict[str, int], seq: int, author: str) -> bool:
    """The protocol's rule: delivered once a principal other than its author received it."""
    return any(s >= seq for p, s in cursors.items() if p != author)


def test_the_mark_decides_as_every_cursor_would() -> None:
    """Reports in any order, split among two writers whose marks are joined or stored by
    ``$max`` of each field (an owner and the replica taking over): the two-cursor mark says
    exactly what the principals' cursors say, and a ``$max`` merge never says more."""
    rng = random.Random(16)
    people = ["a", "b", "c", "d"]
    for _ in range(400):
        cursors: dict[str, int] = {}
        one, two = Mark(), Mark()
        for _ in range(rng.randint(1, 12)):
            got = {p: rng.randint(0, 20) for p in rng.sample(people, rng.randint(1, 3))}
            for p, s in got.items():
                cursors[p] = max(cursors.get(p, 0), s)
            if rng.random() < 0.5:
                one = one.received(got)
            else:
                two = two.received(got)
        joined = one.joined(two)
        # What the store keeps from the two writers' $max of each field.
        top_seq, top_by = max((one.top, one.by), (two.top, two.by))
        stored = Mark(top_seq, top_by, max(one.second, two.second))
        for seq, author in itertools.product(range(1, 21), [*people, "nobody"]):
            assert joined.delivers(seq, author) == truth(cursors, seq, author)
            assert not stored.delivers(seq, author) or truth(cursors, seq, author)
        single = Mark().received(cursors)
        assert all(
            single.delivers(s, a) == truth(cursors, s, a)
            for s, a in itertools.product(range(1, 21), people)
        )


def test_stored_documents_and_hostile_fields() -> None:
    assert mark_of(None) == Mark()
    assert mark_of({"deliveredTop": "x", "deliveredOther": "y"}) == Mark()
    doc = {"deliveredTop": {"seq": 9, "principalId": "u-b"}, "deliveredOther": 4}
    assert mark_of(doc) == Mark(9, "u-b", 4)
    assert mark_of({"_id": "c", **Mark(7, "p", 3).update()}) == Mark(7, "p", 3)
    mark = Mark(9, "u-b", 4)
    assert status("sent", 5, "u-a", mark) == "delivered"
    assert status("sent", 5, "u-b", mark) == "sent"  # only u-b had it past 4
    assert status("sent", 10, "u-a", mark) == "sent"
    assert status("delivered", 99, "u-b", Mark()) == "delivered"  # stored before the mark
    assert status("failed", 1, "u-a", mark) == "failed"
    assert status("sent", "1", "u-a", mark) == "sent"


# ---------------------------------------------------------------- on the service


async def report(nc: Client, cid: str, *who: tuple[str, int], kind: str = "user") -> None:
    items = [
        {"conversationId": cid, "kind": kind, "principalId": pid, "seq": seq} for pid, seq in who
    ]
    await nc.publish(subjects.INTERNAL_DELIVERY, jsonutil.dumps({"items": items}))


async def statuses(request_: Request, cid: str) -> dict[str, str]:
    page = await ok(
        request_, subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 100}, ALICE
    )
    return {m["content"]: m["messageStatus"] for m in page["items"] if m["role"] == "user"}


async def until(check: Any, want: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check() == want:
            return
        await asyncio.sleep(0.05)
    assert await check() == want


async def test_the_authors_other_device_delivers_nothing_another_principal_does(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    conv = await ok(request_, CREATE, {"participants": ["u-bob"]}, ALICE)
    cid = conv["_id"]
    sent = [
        await ok(request_, SEND, {"conversationId": cid, "content": f"a{i}"}, ALICE)
        for i in range(3)
    ]
    bobs = await ok(request_, SEND, {"conversationId": cid, "content": "b0"}, BOB)
    events = Frames()
    await nc.subscribe(subjects.conversation_events(cid), cb=events.cb)

    # Alice's other device received everything: Bob's message is delivered, hers are not.
    await report(nc, cid, ("u-alice", bobs["seq"]))
    frame = (await events.wait_for("message:delivered"))[0]
    assert frame["data"]["cursors"] == [
        {"principalId": "u-alice", "kind": "user", "seq": bobs["seq"]}
    ]
    want = {"a0": "sent", "a1": "sent", "a2": "sent", "b0": "delivered"}
    await until(lambda: statuses(request_, cid), want)

    # Bob received up to a1 (behind Alice): a0 and a1 are delivered, a2 is not.
    events.got.clear()
    await report(nc, cid, ("u-bob", sent[1]["seq"]))
    frame = (await events.wait_for("message:delivered"))[0]
    assert frame["data"]["cursors"] == [
        {"principalId": "u-bob", "kind": "user", "seq": sent[1]["seq"]}
    ]
    want = {"a0": "delivered", "a1": "delivered", "a2": "sent", "b0": "delivered"}
    assert await statuses(request_, cid) == want

    # Every read of stored messages says the same: the log replayed (resume, gap fill),
    # an edit's event, a repeated send's answer.
    replay = await events_since(request_, cid)
    assert replay["success"], replay
    news = {
        f["data"]["content"]: f["data"]["messageStatus"]
        for f in replay["data"]["events"]
        if f["event"] == "message:new" and f["data"]["role"] == "user"
    }
    assert news == want
    edited = await ok(
        request_,
        EDIT,
        {"conversationId": cid, "messageId": sent[0]["_id"], "content": "a0!"},
        ALICE,
    )
    assert edited["messageStatus"] == "delivered"
    keyed = {"conversationId": cid, "content": "k", "clientMessageId": "k-1"}
    first = await ok(request_, SEND, keyed, ALICE)
    assert first["messageStatus"] == "sent"
    await report(nc, cid, ("u-bob", first["seq"]))
    want = {"a0!": "delivered", "a1": "delivered", "a2": "delivered", "b0": "delivered"}
    await until(lambda: statuses(request_, cid), {**want, "k": "delivered"})
    again = await ok(request_, SEND, keyed, ALICE)
    assert (again["_id"], again["messageStatus"]) == (first["_id"], "delivered")
    # Nothing of it was written into the messages.
    docs = await service.store.messages.find({"conversationId": cid, "role": "user"}).to_list()
    assert {d["messageStatus"] for d in docs} == {"sent"}


async def test_more_undelivered_messages_than_memory_holds(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    """A conversation whose author wrote more messages than this replica keeps waiting in
    memory before anyone else received them: all are delivered once someone else received
    them, and a report that delivers only the ones memory let go still says so (read back).
    Before the watermark the oldest stayed ``sent`` for good."""
    conv = await ok(request_, CREATE, {"participants": ["u-bob"]}, ALICE)
    cid = conv["_id"]
    first = await ok(request_, SEND, {"conversationId": cid, "content": "m0"}, ALICE)
    await report(nc, cid, ("u-alice", first["seq"]))  # tracked from here: the rest wait
    for _ in range(100):
        if service.receipts.delivery.tracks(cid):
            break
        await asyncio.sleep(0.05)
    assert service.receipts.delivery.tracks(cid)
    n = delivery.WAITING_MAX + 40
    seqs = [first["seq"]]
    for i in range(1, n):
        m = await ok(request_, SEND, {"conversationId": cid, "content": f"m{i}"}, ALICE)
        seqs.append(m["seq"])
    events = Frames()
    await nc.subscribe(subjects.conversation_events(cid), cb=events.cb)

    # Bob received only the oldest 20, which memory no longer holds.
    await report(nc, cid, ("u-bob", seqs[19]))
    frame = (await events.wait_for("message:delivered"))[0]
    assert frame["data"]["cursors"] == [{"principalId": "u-bob", "kind": "user", "seq": seqs[19]}]
    got = await statuses_all(request_, cid)
    assert [got[s] for s in seqs] == ["delivered"] * 20 + ["sent"] * (n - 20)

    events.got.clear()
    await report(nc, cid, ("u-bob", seqs[-1]))
    await events.wait_for("message:delivered")
    got = await statuses_all(request_, cid)
    assert [got[s] for s in seqs] == ["delivered"] * n


async def test_a_report_past_the_end_of_the_log_delivers_no_later_message(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    """A seq past the log's end (a broken gateway's report) delivers what is there, not the
    messages written after it."""
    conv = await ok(request_, CREATE, {"participants": ["u-bob"]}, ALICE)
    cid = conv["_id"]
    await ok(request_, SEND, {"conversationId": cid, "content": "m0"}, ALICE)
    await report(nc, cid, ("u-bob", 10**9))
    await until(lambda: statuses(request_, cid), {"m0": "delivered"})
    await ok(request_, SEND, {"conversationId": cid, "content": "m1"}, ALICE)
    await service.receipts.flush()
    assert await statuses(request_, cid) == {"m0": "delivered", "m1": "sent"}
    assert mark_of(await service.store.totals.find_one({"_id": cid})).top < 10**9


async def test_a_window_whose_write_is_given_up_is_applied_again(
    service: ConversationService,
    request_: Request,
    nc: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store refuses the totals write (with its marks) until the writer gives up: no
    ``message:delivered`` goes out for it, and the window's reports are applied again with
    the next one, once the store is back: delivered, said once."""
    conv = await ok(request_, CREATE, {"participants": ["u-bob"]}, ALICE)
    cid = conv["_id"]
    m = await ok(request_, SEND, {"conversationId": cid, "content": "m0"}, ALICE)
    await service.sequencer.settle_totals()
    events = Frames()
    await nc.subscribe(subjects.conversation_events(cid), cb=events.cb)
    add_totals = service.store.add_totals
    refused = 0

    async def down(totals: dict[str, Any]) -> None:
        nonlocal refused
        if refused < totals_writer.PROJECTION_ATTEMPTS:
            refused += 1
            raise AutoReconnect("the store is down")
        await add_totals(totals)

    monkeypatch.setattr(service.store, "add_totals", down)
    await report(nc, cid, ("u-bob", m["seq"]))
    frame = (await events.wait_for("message:delivered", seconds=20))[0]
    assert refused == totals_writer.PROJECTION_ATTEMPTS
    assert frame["data"]["cursors"] == [{"principalId": "u-bob", "kind": "user", "seq": m["seq"]}]
    assert await statuses(request_, cid) == {"m0": "delivered"}
    await asyncio.sleep(1.0)
    assert len(events.events("message:delivered")) == 1


async def statuses_all(request_: Request, cid: str) -> dict[int, str]:
    """seq → status of every message, paged by afterSeq."""
    out: dict[int, str] = {}
    after = 0
    while True:
        page = await ok(
            request_,
            subjects.QUERY_MESSAGES_LIST,
            {"conversationId": cid, "afterSeq": after, "limit": 100},
            ALICE,
        )
        for m in page["items"]:
            out[m["seq"]] = m["messageStatus"]
        if not page["hasMore"] or not page["items"]:
            return out
        after = page["items"][-1]["seq"]


async def test_the_mark_moves_on_with_the_partition(
    nc: Client, start_replica: StartReplica
) -> None:
    """The owner applied Alice's own device's report (her messages stay ``sent``), then is
    killed; the replica that takes the partition starts from the stored mark: Bob's later
    report, behind Alice, delivers exactly Alice's messages up to his seq, and says so."""
    a = await start_replica()
    await until_true(lambda: owned(a) == set(range(PARTITIONS)))
    b = await start_replica()
    await until_true(lambda: split_evenly(a, b))
    cid = next(c for c in (new_id("c") for _ in range(1000)) if partition_of(c) in owned(a))
    await create(nc, cid)
    seqs = [await send(nc, cid, k) for k in range(4)]
    await report(nc, cid, ("u-alice", seqs[-1]))

    async def stored_mark() -> Mark:
        return mark_of(await a.store.totals.find_one({"_id": cid}))

    await until(stored_mark, Mark(seqs[-1], "u-alice", 0))

    assert a.ownership is not None
    await a.ownership.abandon()  # killed: its leases stay until they expire
    await a.broker.connection.close()
    await until_true(lambda: partition_of(cid) in owned(b), within=LEASE * 4 + 5)
    events = Frames()
    await nc.subscribe(subjects.conversation_events(cid), cb=events.cb)
    await report(nc, cid, ("u-bob", seqs[1]))
    frame = (await events.wait_for("message:delivered", seconds=10))[0]
    assert frame["data"]["cursors"] == [{"principalId": "u-bob", "kind": "user", "seq": seqs[1]}]
    items, _ = await b.store.list_messages(cid, None, None, 10)
    got = {m.seq: str(m.message_status) for m in items if m.role == "user"}
    assert got == {
        seqs[0]: "delivered",
        seqs[1]: "delivered",
        seqs[2]: "sent",
        seqs[3]: "sent",
    }
    assert b.receipts.delivery.tracks(cid)


async def until_true(check: Callable[[], bool], within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
