"""Read cursors, delivery receipts, unread counts and display names (issue 17), on the
real NATS and the real embedded store."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from nats.aio.client import Client

from parley_contract import jsonutil, subjects
from parley_contract.events import Event, PrincipalKind
from parley_contract.partitions import partition_of
from parley_conversation import receipts
from parley_conversation.service import ConversationService

from .conftest import Request, agent, serve_agents, user

CREATE = subjects.command(Event.CONVERSATION_CREATE)
JOIN = subjects.command(Event.CONVERSATION_JOIN)
SEND = subjects.command(Event.MESSAGE_SEND)
READ = subjects.command(Event.CONVERSATION_READ)

ALICE = {"id": "u-alice", "kind": "user", "name": "Alice Liddell"}
BOB = {"id": "u-bob", "kind": "user", "name": "Bob"}
MALLORY = user("u-mallory")


class Frames:
    """Frames published on one subject, collected."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    async def cb(self, msg: Any) -> None:
        self.got.append(jsonutil.loads(msg.data))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [f for f in self.got if f.get("event") == event]

    async def wait_for(self, event: str, seconds: float = 5.0) -> list[dict[str, Any]]:
        for _ in range(int(seconds / 0.02)):
            found = [f for f in self.got if f.get("event") == event]
            if found:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {event} in {[f.get('event') for f in self.got]}")


async def ok(request_: Request, subject: str, data: Any, who: dict[str, Any]) -> Any:
    r = await request_(subject, data, who)
    assert r["success"], r
    return r["data"]


async def conversation_with_messages(request_: Request, n: int) -> tuple[str, list[int]]:
    conv = await ok(request_, CREATE, {"participants": ["u-bob"]}, ALICE)
    seqs = []
    for i in range(n):
        m = await ok(request_, SEND, {"conversationId": conv["_id"], "content": f"m{i}"}, ALICE)
        seqs.append(m["seq"])
    return conv["_id"], seqs


async def test_unread_counts_and_read_cursor(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    cid, seqs = await conversation_with_messages(request_, 3)
    await ok(request_, SEND, {"conversationId": cid, "content": "bob's own"}, BOB)
    events = Frames()
    await nc.subscribe(subjects.conversation_events(cid), cb=events.cb)
    bobs = Frames()
    await nc.subscribe(subjects.principal_events(PrincipalKind.USER, "u-bob"), cb=bobs.cb)

    listed = await ok(request_, subjects.QUERY_CONVERSATIONS_LIST, {}, BOB)
    item = next(c for c in listed["items"] if c["_id"] == cid)
    assert (item["unreadCount"], item["readSeq"]) == (3, 0)  # bob's own message is not unread
    mine = await ok(request_, subjects.QUERY_CONVERSATIONS_LIST, {}, ALICE)
    assert next(c for c in mine["items"] if c["_id"] == cid)["unreadCount"] == 1

    read = await ok(request_, READ, {"conversationId": cid, "seq": seqs[1]}, BOB)
    assert read == {"conversationId": cid, "seq": seqs[1], "unreadCount": 1}
    # Never backwards: an older seq leaves the cursor where it is.
    again = await ok(request_, READ, {"conversationId": cid, "seq": seqs[0]}, BOB)
    assert again["seq"] == seqs[1] and again["unreadCount"] == 1
    got = await ok(request_, subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, BOB)
    assert (got["unreadCount"], got["readSeq"]) == (1, seqs[1])

    # The other members see it (coalesced, on the conversation), the reader's other
    # connections too (its own subject, with its unread count).
    frame = (await events.wait_for("conversation:read"))[0]
    assert frame["data"]["cursors"] == [{"principalId": "u-bob", "kind": "user", "seq": seqs[1]}]
    own = (await bobs.wait_for("conversation:read"))[0]
    assert own["data"]["unreadCount"] == 1

    joined = await ok(request_, JOIN, {"conversationId": cid}, ALICE)
    assert joined["unreadCount"] == 1
    bob_cursor = next(c for c in joined["cursors"] if c["principalId"] == "u-bob")
    assert bob_cursor["readSeq"] == seqs[1]


async def test_read_refusals(service: ConversationService, request_: Request) -> None:
    cid, seqs = await conversation_with_messages(request_, 1)
    beyond = await request_(READ, {"conversationId": cid, "seq": 10**6}, BOB)
    assert not beyond["success"] and beyond["error"]["code"] == "VALIDATION_ERROR"
    assert beyond["error"]["details"]["field"] == "seq"
    assert beyond["error"]["details"]["lastSeq"] >= seqs[0]
    foreign = await request_(READ, {"conversationId": cid, "seq": 1}, MALLORY)
    assert not foreign["success"] and foreign["error"]["code"] == "FORBIDDEN"
    for bad in (
        {"conversationId": cid, "seq": -1},
        {"conversationId": cid, "seq": "1"},
        {"conversationId": cid, "seq": True},
        {"conversationId": cid},
        {"conversationId": "a.b", "seq": 1},
        {"conversationId": cid, "seq": 1, "x": 1},
    ):
        r = await request_(READ, bad, BOB)
        assert not r["success"] and r["error"]["code"] == "VALIDATION_ERROR", (bad, r)
    missing = await request_(READ, {"conversationId": "conv-nope", "seq": 0}, BOB)
    assert missing["error"]["code"] == "FORBIDDEN"


async def test_delivery_report_marks_messages_delivered(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    cid, _ = await conversation_with_messages(request_, 2)
    bob_msg = await ok(request_, SEND, {"conversationId": cid, "content": "from bob"}, BOB)
    events = Frames()
    await nc.subscribe(subjects.conversation_events(cid), cb=events.cb)
    # Hostile or broken reports are dropped without harm.
    await nc.publish(subjects.INTERNAL_DELIVERY, b"not json")
    await nc.publish(subjects.INTERNAL_DELIVERY, b'{"items": [{"conversationId": "a.b"}]}')
    # Bob's connection received everything: alice's messages are delivered, bob's is not
    # (his own connection receiving it delivers nothing).
    report = {
        "items": [
            {"conversationId": cid, "kind": "user", "principalId": "u-bob", "seq": bob_msg["seq"]}
        ]
    }
    await nc.publish(subjects.INTERNAL_DELIVERY, jsonutil.dumps(report))
    frame = (await events.wait_for("message:delivered"))[0]
    assert frame["data"] == {
        "conversationId": cid,
        "cursors": [{"principalId": "u-bob", "kind": "user", "seq": bob_msg["seq"]}],
    }
    page = await ok(
        request_, subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 10}, ALICE
    )
    status = {m["content"]: m["messageStatus"] for m in page["items"]}
    assert status == {"m0": "delivered", "m1": "delivered", "from bob": "sent"}
    # The same report again changes nothing and says nothing.
    events.got.clear()
    await nc.publish(subjects.INTERNAL_DELIVERY, jsonutil.dumps(report))
    with pytest.raises(AssertionError):
        await events.wait_for("message:delivered", seconds=1.5)
    # A large conversation: 300 members received a new message in one report — one event,
    # naming one principal that delivered it, and the message delivered.
    last = await ok(request_, SEND, {"conversationId": cid, "content": "to many"}, ALICE)
    crowd = [
        {"conversationId": cid, "kind": "user", "principalId": f"u-{i}", "seq": last["seq"]}
        for i in range(300)
    ]
    await nc.publish(subjects.INTERNAL_DELIVERY, jsonutil.dumps({"items": crowd}))
    frame = (await events.wait_for("message:delivered"))[0]
    assert len(frame["data"]["cursors"]) == 1
    await asyncio.sleep(1.0)
    assert len(events.events("message:delivered")) == 1
    page = await ok(
        request_, subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 10}, ALICE
    )
    assert {m["content"]: m["messageStatus"] for m in page["items"]}["to many"] == "delivered"


async def test_activity_reaches_members_and_names_are_returned(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    bobs = Frames()
    await nc.subscribe(subjects.principal_events(PrincipalKind.USER, "u-bob"), cb=bobs.cb)
    cid, seqs = await conversation_with_messages(request_, 2)
    activity = await bobs.wait_for("conversation:activity")
    assert activity[-1]["data"]["conversationId"] == cid
    # Coalesced: two sends in one window make one event with the latest message.
    await asyncio.sleep(1.0)
    frames = [f for f in bobs.got if f["event"] == "conversation:activity"]
    assert frames[-1]["data"]["lastSeq"] == seqs[-1]
    assert len(frames) <= 2
    # Bob never connected: id only. Once he joined (his token's name), everyone sees "Bob".
    got = await ok(request_, subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE)
    names = {p.get("userId"): p.get("name") for p in got["participants"]}
    assert names == {"u-alice": "Alice Liddell", "u-bob": None}
    await ok(request_, JOIN, {"conversationId": cid}, BOB)
    got = await ok(request_, subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE)
    names = {p.get("userId"): p.get("name") for p in got["participants"]}
    assert names == {"u-alice": "Alice Liddell", "u-bob": "Bob"}


async def test_an_agent_answer_delivers_what_it_answered(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    """An agent bridge has no connection to report delivery: the agent's own stored answer
    says it received what came before."""
    await serve_agents(nc, "agent-general")
    conv = await ok(request_, CREATE, {"agentId": "agent-general"}, ALICE)
    cid = conv["_id"]
    events = Frames()
    await nc.subscribe(subjects.conversation_events(cid), cb=events.cb)
    q = await ok(request_, SEND, {"conversationId": cid, "content": "question"}, ALICE)
    answer = {"conversationId": cid, "content": "answer", "parentMessageId": q["_id"]}
    a = await ok(request_, SEND, answer, agent("agent-general"))
    frame = next(
        f
        for f in await events.wait_for("message:delivered")
        if f["data"]["cursors"][0]["principalId"] == "agent-general"
    )
    assert frame["data"]["cursors"] == [
        {"principalId": "agent-general", "kind": "agent", "seq": a["seq"]}
    ]
    page = await ok(
        request_, subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 10}, ALICE
    )
    status = {m["content"]: m["messageStatus"] for m in page["items"] if m["role"] != "system"}
    assert status == {"question": "delivered", "answer": "sent"}


class CountingUpdates:
    """The messages collection, counting its update_many calls (the writes receipts made
    before the watermark) and its finds (the reads)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.updates = 0
        self.finds = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def find(self, *args: Any, **kwargs: Any) -> Any:
        self.finds += 1
        return self.inner.find(*args, **kwargs)

    async def update_many(self, *args: Any, **kwargs: Any) -> Any:
        self.updates += 1
        return await self.inner.update_many(*args, **kwargs)


async def test_reports_of_a_window_are_one_write_and_no_message_is_rewritten(
    service: ConversationService, request_: Request, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three gateways' reports on three conversations within one window: one write for all
    of them, of the conversations' delivery marks with their totals, and no write of any
    message (each delivered message was updated in the log before: as costly to the store
    as its insert, under the lock its inserts wait for)."""
    convs = [await conversation_with_messages(request_, 2) for _ in range(3)]
    await service.sequencer.settle_totals()
    counting = CountingUpdates(service.receipts.delivery.messages)
    monkeypatch.setattr(service.receipts.delivery, "messages", counting)
    writes: list[dict[str, Any]] = []
    add_totals = service.store.add_totals

    async def counted(totals: dict[str, Any]) -> None:
        writes.append(dict(totals))
        await add_totals(totals)

    monkeypatch.setattr(service.store, "add_totals", counted)
    for cid, seqs in convs:
        item = {"conversationId": cid, "kind": "user", "principalId": "u-bob", "seq": seqs[-1]}
        await service.receipts.delivery_report(jsonutil.dumps({"items": [item]}))
    assert writes == []  # merged, not applied per report
    await service.receipts.flush()
    assert len(writes) == 1 and set(writes[0]) == {cid for cid, _ in convs}
    assert counting.updates == 0
    for cid, _ in convs:
        page = await ok(
            request_, subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 10}, ALICE
        )
        assert {m["messageStatus"] for m in page["items"]} == {"delivered"}
        # The log still says what was stored: the status is derived when read.
        docs = await service.store.messages.find({"conversationId": cid, "role": "user"}).to_list()
        assert {d["messageStatus"] for d in docs} == {"sent"}


async def test_the_writer_of_a_conversation_reads_nothing_for_its_reports(
    service: ConversationService, request_: Request, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first report, the messages this replica stores wait for delivery at once:
    the reports that follow read nothing from the log (a partition's owner writes all its
    conversations), and still mark what they deliver."""
    cid, seqs = await conversation_with_messages(request_, 2)
    counting = CountingUpdates(service.receipts.delivery.messages)
    monkeypatch.setattr(service.receipts.delivery, "messages", counting)

    async def bob_got(seq: int) -> None:
        item = {"conversationId": cid, "kind": "user", "principalId": "u-bob", "seq": seq}
        await service.receipts.delivery_report(jsonutil.dumps({"items": [item]}))
        await service.receipts.flush()

    await bob_got(seqs[-1])
    assert counting.finds == 1  # the first report of a conversation reads its recent log
    for k in range(3):
        sent = await ok(request_, SEND, {"conversationId": cid, "content": f"n{k}"}, ALICE)
        await bob_got(sent["seq"])
    assert counting.finds == 1
    page = await ok(
        request_, subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 10}, ALICE
    )
    assert {m["content"]: m["messageStatus"] for m in page["items"] if m["role"] == "user"} == {
        "m0": "delivered",
        "m1": "delivered",
        "n0": "delivered",
        "n1": "delivered",
        "n2": "delivered",
    }


async def test_a_taken_partition_applies_the_reports_held_for_its_conversations_only(
    service: ConversationService, request_: Request, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reports of conversations another replica owns are held, at most ``HELD_MAX`` (the
    least recently reported dropped); taking a partition applies the held reports of its
    conversations, none of another partition's and none dropped."""
    monkeypatch.setattr(receipts, "HELD_MAX", 2)
    ids = (f"held-{uuid.uuid4().hex[:12]}" for _ in range(10_000))
    dropped = next(ids)
    taken = next(c for c in ids if partition_of(c) == partition_of(dropped))
    other = next(c for c in ids if partition_of(c) != partition_of(dropped))
    last: dict[str, int] = {}
    for cid in (dropped, taken, other):
        await ok(request_, CREATE, {"conversationId": cid, "participants": ["u-bob"]}, ALICE)
        sent = await ok(request_, SEND, {"conversationId": cid, "content": "hi"}, ALICE)
        last[cid] = sent["seq"]
    mine = service.receipts.mine
    service.receipts.mine = lambda cid: False  # another replica owns them all
    for cid in (dropped, taken, other):  # the first one reported is dropped (HELD_MAX 2)
        item = {"conversationId": cid, "kind": "user", "principalId": "u-bob", "seq": last[cid]}
        await service.receipts.delivery_report(jsonutil.dumps({"items": [item]}))
    service.receipts.mine = mine

    async def status(cid: str) -> str:
        page = await ok(
            request_, subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 10}, ALICE
        )
        return str(page["items"][-1]["messageStatus"])

    service.receipts.took(partition_of(taken))
    await service.receipts.flush()
    assert [await status(c) for c in (dropped, taken, other)] == ["sent", "delivered", "sent"]
    service.receipts.took(partition_of(other))
    service.receipts.took(partition_of(taken))  # nothing held for it any more
    await service.receipts.flush()
    assert [await status(c) for c in (dropped, taken, other)] == ["sent", "delivered", "delivered"]


async def test_a_flush_returns_once_the_reports_before_it_are_applied(
    service: ConversationService, request_: Request
) -> None:
    """flush() returns once the reports received before it are applied, also when the
    window's flush took them first (it returned at once: the messages still read ``sent``)."""
    cid, seqs = await conversation_with_messages(request_, 2)
    await service.receipts.flush()  # what the sends left (their activity)
    item = {"conversationId": cid, "kind": "user", "principalId": "u-bob", "seq": seqs[-1]}
    await service.receipts.delivery_report(jsonutil.dumps({"items": [item]}))
    window = asyncio.create_task(service.receipts.flush())
    await asyncio.sleep(0)  # the window's flush took the report and reads the store
    await service.receipts.flush()
    page = await ok(
        request_, subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 10}, ALICE
    )
    assert {m["messageStatus"] for m in page["items"]} == {"delivered"}
    await window


async def test_a_stop_during_the_windows_flush_applies_its_reports(
    service: ConversationService, request_: Request, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() lets the window's flush under way end, not cancelled halfway: the reports it
    took are applied (they were dropped: a quiet conversation's messages stayed ``sent``)."""
    cid, seqs = await conversation_with_messages(request_, 2)
    gate, taken = asyncio.Event(), asyncio.Event()
    apply_many = service.receipts.delivery.apply_many

    async def slow(reports: Any) -> Any:
        taken.set()
        await gate.wait()
        return await apply_many(reports)

    monkeypatch.setattr(service.receipts.delivery, "apply_many", slow)
    item = {"conversationId": cid, "kind": "user", "principalId": "u-bob", "seq": seqs[-1]}
    await service.receipts.delivery_report(jsonutil.dumps({"items": [item]}))
    await asyncio.wait_for(taken.wait(), 10)  # the window's flush took the report
    stopping = asyncio.create_task(service.receipts.stop())
    await asyncio.sleep(0.1)
    gate.set()
    await stopping
    page = await ok(
        request_, subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 10}, ALICE
    )
    assert {m["messageStatus"] for m in page["items"]} == {"delivered"}
