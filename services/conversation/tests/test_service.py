"""The service over a real NATS server and the real embedded store (SecantusDB)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from parley_contract import jsonutil, subjects
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import AgentStop, AgentTurn
from parley_conversation.service import ConversationService
from parley_devstack.servers import NatsServer, StoreServer, free_port

from .conftest import Request, agent, serve_agents, service_principal, settings_for, user

CREATE = subjects.command(Event.CONVERSATION_CREATE)
JOIN = subjects.command(Event.CONVERSATION_JOIN)
UPDATE = subjects.command(Event.CONVERSATION_UPDATE)
SEND = subjects.command(Event.MESSAGE_SEND)
EDIT = subjects.command(Event.MESSAGE_EDIT)
DELETE = subjects.command(Event.MESSAGE_DELETE)
REACT = subjects.command(Event.MESSAGE_REACT)
STOP = subjects.command(Event.MESSAGE_STOP)
TASK = subjects.command(Event.TASK_CREATE)

ALICE = user("u-alice")
BOB = user("u-bob")
MALLORY = user("u-mallory")
AGENT = agent("agent-general")


@pytest.fixture(autouse=True)
async def served_agents(nc: Client) -> AsyncIterator[None]:
    """The agents these tests assign are served (an unserved agentId is NOT_FOUND), and stay
    so: announced again every second as a bridge does, or a test that outlasts the agent
    watch's dead-after window (a busy machine) gets "agent offline" notices in its log."""
    await serve_agents(nc, "agent-general", "agent-code")

    async def refresh() -> None:
        while True:
            await asyncio.sleep(1.0)
            await serve_agents(nc, "agent-general", "agent-code")

    task = asyncio.create_task(refresh())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def create(request_: Request, **data: Any) -> dict[str, Any]:
    data.setdefault("participants", ["u-bob"])
    r = await request_(CREATE, data, ALICE)
    assert r["success"], r
    conv: dict[str, Any] = r["data"]
    return conv


async def list_all(request_: Request, cid: str) -> list[dict[str, Any]]:
    r = await request_(subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "limit": 100})
    assert r["success"], r
    items: list[dict[str, Any]] = r["data"]["items"]
    return items


async def events_since(
    request_: Request, cid: str, after: int = 0, principal: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = {
        "principal": principal or ALICE,
        "conversationId": cid,
        "afterSeq": after,
        "limit": 1000,
    }
    return await request_(subjects.QUERY_EVENTS_SINCE, None, raw=jsonutil.dumps(body))


@pytest.fixture
async def two_replicas(
    nats_server: NatsServer, store_server: StoreServer, db_name: str
) -> AsyncIterator[list[ConversationService]]:
    replicas = [
        ConversationService(settings_for(nats_server.url, store_server.url, db_name))
        for _ in range(2)
    ]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        yield replicas
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))


@pytest.fixture
async def two_patient_replicas(
    nats_server: NatsServer, store_server: StoreServer, db_name: str
) -> AsyncIterator[list[ConversationService]]:
    """Two replicas that never shed load (max_wait 0): for tests of sequencing under a burst,
    which a busy machine with durable (fsynced) commits could otherwise turn into refusals."""
    replicas = [
        ConversationService(
            settings_for(nats_server.url, store_server.url, db_name, max_wait_seconds=0)
        )
        for _ in range(2)
    ]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        yield replicas
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))


def handled(svc: ConversationService, op: str) -> float:
    value = svc.metrics.registry.get_sample_value(
        "parley_conversation_requests_total", {"operation": op, "outcome": "ok"}
    )
    return value or 0.0


async def test_500_concurrent_sends_through_two_replicas(
    two_patient_replicas: list[ConversationService], request_: Request, nc: Client
) -> None:
    two_replicas = two_patient_replicas
    conv = await create(request_, agentId="agent-general", title="load")
    cid = conv["_id"]
    published: list[int] = []

    async def on_event(msg: Any) -> None:
        seq = jsonutil.loads(msg.data).get("seq")
        if seq is not None:  # durable ones (agent:thinking "queued" is ephemeral)
            published.append(seq)

    sub = await nc.subscribe(subjects.conversation_events(cid), cb=on_event)

    async def send(i: int) -> dict[str, Any]:
        if i % 2:
            data = {"conversationId": cid, "content": f"user {i}", "clientMessageId": f"c-{i}"}
            return await request_(SEND, data, ALICE if i % 4 == 1 else BOB, wait=60)
        data = {
            "conversationId": cid,
            "content": f"agent {i}",
            "usage": {"promptTokens": 1, "completionTokens": 2, "totalTokens": 3},
            "cost": 0.25,
            "clientMessageId": f"c-{i}",
        }
        return await request_(SEND, data, AGENT, wait=60)

    replies = await asyncio.gather(*(send(i) for i in range(500)))
    assert all(r["success"] for r in replies), [r for r in replies if not r["success"]][:3]
    seqs = sorted(r["data"]["seq"] for r in replies)
    assert seqs == list(range(2, 502))  # seq 1 is conversation:created
    assert all(r["data"]["messageStatus"] == "sent" for r in replies)
    # Both replicas did part of the work.
    assert all(handled(s, Event.MESSAGE_SEND.value) > 0 for s in two_replicas)

    log = await events_since(request_, cid)
    assert log["success"], log
    assert [f["seq"] for f in log["data"]["events"]] == list(range(1, 502))
    assert log["data"]["lastSeq"] == 501
    # Every reply is exactly the frame that was stored for its seq, but for its status: a
    # replayed message:new carries the message as it is now, and the agent's answers have
    # marked the users' messages before them delivered (issue 17).
    by_seq = {f["seq"]: f for f in log["data"]["events"]}
    for r in replies:
        stored = dict(by_seq[r["data"]["seq"]]["data"])
        assert stored.pop("messageStatus") in ("sent", "delivered")
        assert stored == {k: v for k, v in r["data"].items() if k != "messageStatus"}

    # Totals are written in the background (coalesced); a replica's reads wait for its own,
    # so across replicas wait for both to settle.
    await asyncio.gather(*(s.sequencer.settle_totals() for s in two_replicas))
    got = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE)
    assert got["success"], got
    c = got["data"]
    assert c["totalMessages"] == 500
    assert c["totalTokens"] == 250 * 3
    assert c["totalCost"] == pytest.approx(250 * 0.25)
    assert c["lastMessage"]["seq"] == 501
    assert c["lastSeq"] == 501

    for _ in range(100):  # core NATS delivers asynchronously
        if len(published) >= 500:
            break
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    assert sorted(published) == list(range(2, 502))


async def test_client_message_id_stores_once(
    two_replicas: list[ConversationService], request_: Request
) -> None:
    cid = (await create(request_))["_id"]
    data = {"conversationId": cid, "content": "once", "clientMessageId": "retry-1"}
    first = await request_(SEND, data, ALICE)
    assert first["success"], first
    # Sequential retry, then a burst of concurrent retries through both replicas.
    again = await request_(SEND, data, ALICE)
    assert again["data"] == first["data"]
    burst = await asyncio.gather(*(request_(SEND, data, ALICE) for _ in range(30)))
    assert all(r["success"] and r["data"] == first["data"] for r in burst)
    # A fresh id raced from the start: still one message.
    data2 = {"conversationId": cid, "content": "race", "clientMessageId": "retry-2"}
    race = await asyncio.gather(*(request_(SEND, data2, ALICE) for _ in range(30)))
    assert len({r["data"]["_id"] for r in race}) == 1
    msgs = await request_(subjects.QUERY_MESSAGES_LIST, {"conversationId": cid}, ALICE)
    assert [m["content"] for m in msgs["data"]["items"]] == ["once", "race"]
    log = await events_since(request_, cid)
    assert [f["seq"] for f in log["data"]["events"]] == [1, 2, 3]
    got = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE)
    assert got["data"]["totalMessages"] == 2


async def test_outsider_can_neither_read_nor_write(
    service: ConversationService, request_: Request
) -> None:
    cid = (await create(request_))["_id"]
    sent = await request_(SEND, {"conversationId": cid, "content": "secret"}, ALICE)
    mid = sent["data"]["_id"]
    attempts: list[tuple[str, dict[str, Any]]] = [
        (SEND, {"conversationId": cid, "content": "let me in"}),
        (JOIN, {"conversationId": cid}),
        (UPDATE, {"conversationId": cid, "removeParticipants": ["u-mallory"]}),
        (UPDATE, {"conversationId": cid, "title": "mine now"}),
        (EDIT, {"conversationId": cid, "messageId": mid, "content": "x"}),
        (DELETE, {"conversationId": cid, "messageId": mid}),
        (REACT, {"conversationId": cid, "messageId": mid, "emoji": "x"}),
        (STOP, {"conversationId": cid}),
        (TASK, {"conversationId": cid, "title": "t"}),
        (subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}),
        (subjects.QUERY_MESSAGES_LIST, {"conversationId": cid}),
    ]
    for subject, data in attempts:
        for who in (MALLORY, agent("agent-other")):
            r = await request_(subject, data, who)
            assert not r["success"], (subject, r)
            assert r["error"]["code"] == "FORBIDDEN", (subject, r)
            assert "secret" not in jsonutil.dumps(r).decode()
    r = await events_since(request_, cid, principal=MALLORY)
    assert r["error"]["code"] == "FORBIDDEN"
    # A conversation that does not exist answers exactly the same.
    r2 = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": "conv-nope"}, MALLORY)
    r3 = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, MALLORY)
    assert r2["error"] == r3["error"]
    lst = await request_(subjects.QUERY_CONVERSATIONS_LIST, {}, MALLORY)
    assert lst["data"] == {"items": [], "nextCursor": None}
    # Nothing changed.
    log = await events_since(request_, cid)
    assert [f["event"] for f in log["data"]["events"]] == ["conversation:created", "message:new"]


async def test_bad_input_is_refused_with_the_right_code(
    service: ConversationService, request_: Request
) -> None:
    cid = (await create(request_))["_id"]
    bad: list[tuple[str, Any, str]] = [
        (SEND, {"conversationId": cid}, "VALIDATION_ERROR"),  # empty content
        (SEND, {"conversationId": cid, "content": "   "}, "VALIDATION_ERROR"),
        (SEND, {"conversationId": cid, "content": "x", "colour": "red"}, "VALIDATION_ERROR"),
        (SEND, {"conversationId": "a.b.>", "content": "x"}, "VALIDATION_ERROR"),
        (SEND, {"content": "x"}, "VALIDATION_ERROR"),
        (SEND, {"conversationId": cid, "content": "x" * 32_001}, "PAYLOAD_TOO_LARGE"),
        (
            SEND,
            {"conversationId": cid, "content": "x", "metadata": {"$set": 1}},
            "VALIDATION_ERROR",
        ),
        (SEND, {"conversationId": cid, "content": "x", "role": "assistant"}, "FORBIDDEN"),
        (SEND, {"conversationId": cid, "content": "x", "role": "system"}, "FORBIDDEN"),
        (SEND, {"conversationId": cid, "content": "x", "cost": 1.0}, "FORBIDDEN"),
        (
            SEND,
            {
                "conversationId": cid,
                "content": "x",
                "usage": {"promptTokens": 1, "completionTokens": 1, "totalTokens": 2},
            },
            "FORBIDDEN",
        ),
        (SEND, {"conversationId": cid, "content": "x", "messageType": "tool_call"}, "FORBIDDEN"),
        (SEND, [1, 2], "VALIDATION_ERROR"),
        (REACT, {"conversationId": cid, "messageId": "m", "emoji": "a.b"}, "VALIDATION_ERROR"),
        (EDIT, {"conversationId": cid, "messageId": "msg-missing", "content": "x"}, "NOT_FOUND"),
        (UPDATE, {"conversationId": cid, "status": "exploded"}, "VALIDATION_ERROR"),
        (CREATE, {"conversationId": cid}, "CONFLICT"),
        (CREATE, {"title": "x" * 201}, "VALIDATION_ERROR"),
        (
            subjects.QUERY_MESSAGES_LIST,
            {"conversationId": cid, "limit": 100000},
            "VALIDATION_ERROR",
        ),
        (subjects.QUERY_CONVERSATIONS_LIST, {"cursor": "!!!"}, "VALIDATION_ERROR"),
    ]
    for subject, data, code in bad:
        r = await request_(subject, data, ALICE)
        assert not r["success"], (subject, data, r)
        assert r["error"]["code"] == code, (subject, data, r)
        assert r["error"]["message"]
    raw_cases: list[tuple[bytes, str]] = [
        (b"not json", "VALIDATION_ERROR"),
        (b"{}", "VALIDATION_ERROR"),
        (
            jsonutil.dumps({"principal": {"id": "u", "kind": "alien"}, "data": {}}),
            "VALIDATION_ERROR",
        ),
        (
            b'{"principal": {"id": "u-alice", "kind": "user"}, "data": {"content": "'
            + b"x" * 300_000
            + b'"}}',
            "PAYLOAD_TOO_LARGE",
        ),
    ]
    for raw, code in raw_cases:
        r = await request_(SEND, None, raw=raw)
        assert r["error"]["code"] == code, (raw[:40], r)
    # Commands this service does not handle are not answered by it (the gateway refuses
    # unknown events; tool:call belongs to the agent bridge).
    with pytest.raises(nats.errors.NoRespondersError):
        await request_(subjects.command(Event.TYPING_START), {"conversationId": cid}, ALICE)
    # An agent may not act as a user or as the system.
    r = await request_(SEND, {"conversationId": cid, "content": "x", "role": "user"}, AGENT)
    assert r["error"]["code"] == "FORBIDDEN"
    # A rejected write leaves nothing behind; the service is still fine.
    log = await events_since(request_, cid)
    assert [f["seq"] for f in log["data"]["events"]] == [1]
    ok = await request_(SEND, {"conversationId": cid, "content": "still here"}, ALICE)
    assert ok["success"] and ok["data"]["seq"] == 2
    got = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE)
    assert got["data"]["totalMessages"] == 1


async def test_events_since_replays_exactly_what_was_published(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    cid = (await create(request_, agentId="agent-general"))["_id"]
    frames: list[dict[str, Any]] = []

    async def on_event(msg: Any) -> None:
        frame = jsonutil.loads(msg.data)
        if "seq" in frame:  # durable ones (agent:thinking "queued" is ephemeral)
            frames.append(frame)

    sub = await nc.subscribe(subjects.conversation_events(cid), cb=on_event)
    m1 = (await request_(SEND, {"conversationId": cid, "content": "one"}, ALICE))["data"]
    m2 = (await request_(SEND, {"conversationId": cid, "content": "two"}, BOB))["data"]
    r = await request_(
        EDIT, {"conversationId": cid, "messageId": m1["_id"], "content": "uno"}, ALICE
    )
    assert r["success"] and r["data"]["content"] == "uno" and r["data"]["editedAt"], r
    r = await request_(EDIT, {"conversationId": cid, "messageId": m1["_id"], "content": "x"}, BOB)
    assert r["error"]["code"] == "FORBIDDEN"
    r = await request_(REACT, {"conversationId": cid, "messageId": m2["_id"], "emoji": "👍"}, ALICE)
    assert r["data"]["reactions"] == {"👍": ["u-alice"]}, r
    r = await request_(DELETE, {"conversationId": cid, "messageId": m2["_id"]}, BOB)
    assert r["success"] and r["data"]["deletedAt"] and r["data"]["isActive"] is False, r
    r = await request_(DELETE, {"conversationId": cid, "messageId": m2["_id"]}, BOB)
    assert r["error"]["code"] == "CONFLICT"
    r = await request_(UPDATE, {"conversationId": cid, "title": "renamed", "tags": ["a"]}, BOB)
    assert r["success"] and r["data"]["title"] == "renamed", r
    r = await request_(TASK, {"conversationId": cid, "title": "summarize"}, ALICE)
    assert r["success"] and r["data"]["agentId"] == "agent-general", r
    for _ in range(100):
        if len(frames) >= 7:
            break
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    log = await events_since(request_, cid)
    replayed = [f for f in log["data"]["events"] if f["seq"] > 1]
    published = sorted(frames, key=lambda f: f["seq"])
    # Every event replays as published, except that a message:new carries the message as
    # it is now (the message is its own log entry): the edit, reaction and deletion that
    # follow it in the log bring a replaying client to the same state as a live one.
    assert [f for f in replayed if f["event"] != "message:new"] == [
        f for f in published if f["event"] != "message:new"
    ]
    by_id = {m["_id"]: m for m in (await list_all(request_, cid))}
    for got, live in zip(replayed[:2], published[:2], strict=True):
        assert {k: v for k, v in got.items() if k != "data"} == {
            k: v for k, v in live.items() if k != "data"
        }
        assert got["data"] == by_id[live["data"]["_id"]]
    assert published[0]["data"]["content"] == "one" and replayed[0]["data"]["content"] == "uno"
    assert [f["event"] for f in replayed] == [
        "message:new",
        "message:new",
        "message:updated",
        "message:reacted",
        "message:deleted",
        "conversation:updated",
        "task:created",
    ]
    assert [f["seq"] for f in replayed] == list(range(2, 9))
    # afterSeq/untilSeq window.
    body = {"principal": BOB, "conversationId": cid, "afterSeq": 3, "untilSeq": 5}
    w = await request_(subjects.QUERY_EVENTS_SINCE, None, raw=jsonutil.dumps(body))
    assert [f["seq"] for f in w["data"]["events"]] == [4, 5]
    assert w["data"]["lastSeq"] == 8


async def test_agent_switch_writes_a_system_message(
    service: ConversationService, request_: Request
) -> None:
    cid = (await create(request_, agentId="agent-general"))["_id"]
    r = await request_(UPDATE, {"conversationId": cid, "agentId": "agent-code"}, ALICE)
    assert r["success"], r
    assert r["data"]["agentId"] == "agent-code"
    log = (await events_since(request_, cid))["data"]["events"]
    assert [f["event"] for f in log] == [
        "conversation:created",
        "conversation:updated",
        "message:new",
    ]
    system = log[2]["data"]
    assert system["role"] == "system" and system["messageType"] == "system"
    assert system["content"] == "Agent switched from 'agent-general' to 'agent-code'"
    assert system["metadata"] == {"previousAgentId": "agent-general", "newAgentId": "agent-code"}
    # The old agent lost access, the new one has it.
    r = await request_(
        subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, agent("agent-general")
    )
    assert r["error"]["code"] == "FORBIDDEN"
    r = await request_(
        SEND, {"conversationId": cid, "content": "hello from code"}, agent("agent-code")
    )
    assert (
        r["success"] and r["data"]["role"] == "assistant" and r["data"]["agentId"] == "agent-code"
    )


async def test_removing_oneself_ends_access_and_keeps_joined_at(
    service: ConversationService, request_: Request
) -> None:
    cid = (await create(request_))["_id"]
    j = await request_(JOIN, {"conversationId": cid, "sinceSeq": 0}, BOB)
    assert j["success"] and j["data"]["lastSeq"] == 1 and j["data"]["conversation"]["_id"] == cid
    r = await request_(UPDATE, {"conversationId": cid, "removeParticipants": ["u-bob"]}, BOB)
    assert r["success"], r
    bob = next(p for p in r["data"]["participants"] if p.get("userId") == "u-bob")
    assert bob["joinedAt"] and bob["leftAt"]
    for subject, data in [
        (SEND, {"conversationId": cid, "content": "hi"}),
        (JOIN, {"conversationId": cid}),
        (subjects.QUERY_MESSAGES_LIST, {"conversationId": cid}),
    ]:
        assert (await request_(subject, data, BOB))["error"]["code"] == "FORBIDDEN"
    # Alice adds Bob back: a new participant entry, the old one keeps its leftAt.
    r = await request_(UPDATE, {"conversationId": cid, "addParticipants": ["u-bob"]}, ALICE)
    entries = [p for p in r["data"]["participants"] if p.get("userId") == "u-bob"]
    assert len(entries) == 2 and entries[0]["leftAt"] and "leftAt" not in entries[1]
    assert (await request_(SEND, {"conversationId": cid, "content": "back"}, BOB))["success"]


async def test_history_queries(service: ConversationService, request_: Request) -> None:
    carol = user("u-carol")
    ids = []
    for i in range(5):
        r = await request_(CREATE, {"title": f"c{i}"}, carol)
        ids.append(r["data"]["_id"])
    await request_(UPDATE, {"conversationId": ids[0], "status": "archived"}, carol)
    page1 = await request_(subjects.QUERY_CONVERSATIONS_LIST, {"limit": 2}, carol)
    assert page1["success"], page1
    got = [c["_id"] for c in page1["data"]["items"]]
    cursor = page1["data"]["nextCursor"]
    while cursor:
        page = await request_(
            subjects.QUERY_CONVERSATIONS_LIST, {"limit": 2, "cursor": cursor}, carol
        )
        got += [c["_id"] for c in page["data"]["items"]]
        cursor = page["data"]["nextCursor"]
    assert got == list(reversed(ids))  # newest first
    # The gateway forwards absent HTTP query parameters as null.
    nulls = {"status": None, "cursor": None, "limit": None}
    everything = await request_(subjects.QUERY_CONVERSATIONS_LIST, nulls, carol)
    assert [c["_id"] for c in everything["data"]["items"]] == list(reversed(ids))
    archived = await request_(subjects.QUERY_CONVERSATIONS_LIST, {"status": "archived"}, carol)
    assert [c["_id"] for c in archived["data"]["items"]] == [ids[0]]

    cid = ids[1]
    for i in range(7):
        await request_(SEND, {"conversationId": cid, "content": f"m{i}"}, carol)
    q = subjects.QUERY_MESSAGES_LIST
    latest = (await request_(q, {"conversationId": cid, "limit": 3}, carol))["data"]
    assert [m["content"] for m in latest["items"]] == ["m4", "m5", "m6"] and latest["hasMore"]
    older = (
        await request_(
            q, {"conversationId": cid, "limit": 3, "beforeSeq": latest["items"][0]["seq"]}, carol
        )
    )["data"]
    assert [m["content"] for m in older["items"]] == ["m1", "m2", "m3"] and older["hasMore"]
    nulls = {"conversationId": cid, "afterSeq": None, "beforeSeq": None, "limit": None}
    default = (await request_(q, nulls, carol))["data"]
    assert len(default["items"]) == 7 and not default["hasMore"]
    newer = (await request_(q, {"conversationId": cid, "limit": 5, "afterSeq": 4}, carol))["data"]
    assert [m["seq"] for m in newer["items"]] == [5, 6, 7, 8] and not newer["hasMore"]


@pytest.fixture
async def own_nats(tmp_path: Any) -> AsyncIterator[NatsServer]:
    """A NATS server of its own: the agent bridge's tests put a consumer on the shared
    work-queue stream, and a work queue allows only one consumer per subject."""
    server = await asyncio.to_thread(NatsServer(tmp_path / "own-nats").start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_agent_turn_and_stop_are_published(
    own_nats: NatsServer, store_server: StoreServer, db_name: str
) -> None:
    svc = ConversationService(settings_for(own_nats.url, store_server.url, db_name))
    await svc.start()
    nc = await nats.connect(own_nats.url)
    try:
        await _agent_turn_and_stop(nc)
    finally:
        await nc.drain()
        await svc.stop()


async def _agent_turn_and_stop(nc: Client) -> None:
    async def request_(subject: str, data: Any, principal: dict[str, Any]) -> dict[str, Any]:
        body = jsonutil.dumps({"principal": principal, "data": data})
        reply: dict[str, Any] = jsonutil.loads((await nc.request(subject, body, timeout=10)).data)
        return reply

    await serve_agents(nc, "agent-general")
    cid = (await create(request_, agentId="agent-general"))["_id"]
    js = nc.jetstream()
    psub = await js.pull_subscribe(
        subjects.AGENT_TURN, durable=None, stream=subjects.STREAM_AGENT_TURNS
    )
    sent = (await request_(SEND, {"conversationId": cid, "content": "question?"}, ALICE))["data"]
    await request_(SEND, {"conversationId": cid, "content": "answer", "role": "assistant"}, AGENT)
    turns: list[AgentTurn] = []
    for _ in range(20):
        try:
            msgs = await psub.fetch(256, timeout=0.5)
        except TimeoutError:
            break
        for m in msgs:
            t = AgentTurn.model_validate_json(m.data)
            if t.conversation_id == cid:
                turns.append(t)
                assert m.headers and m.headers.get("Nats-Msg-Id") == t.message_id
            await m.ack()
    assert [(t.message_id, t.seq, t.agent_id) for t in turns] == [(sent["_id"], 2, "agent-general")]

    stops: list[AgentStop] = []
    await psub.unsubscribe()

    async def on_stop(msg: Any) -> None:
        stops.append(AgentStop.model_validate_json(msg.data))

    sub = await nc.subscribe(subjects.AGENT_STOP, cb=on_stop)
    r = await request_(STOP, {"conversationId": cid}, ALICE)
    assert r["success"] and r["data"] == {"stopping": True}
    for _ in range(50):
        if stops:
            break
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    assert stops and stops[0].conversation_id == cid and stops[0].principal.id == "u-alice"


async def test_roles_and_agent_fields(service: ConversationService, request_: Request) -> None:
    cid = (await create(request_, agentId="agent-general"))["_id"]
    call = {
        "conversationId": cid,
        "content": "",
        "messageType": "tool_call",
        "toolCalls": [
            {"id": "call-1", "type": "mcp_tool", "function": {"name": "search", "arguments": "{}"}}
        ],
    }
    r = await request_(SEND, call, AGENT)
    assert r["success"] and r["data"]["role"] == "assistant", r
    result = {
        "conversationId": cid,
        "content": "42",
        "messageType": "tool_result",
        "toolResults": [
            {"toolCallId": "call-1", "toolName": "search", "result": {"n": 42}, "success": True}
        ],
    }
    r = await request_(SEND, result, AGENT)
    assert r["success"] and r["data"]["role"] == "tool", r
    thinking = {
        "conversationId": cid,
        "content": "",
        "messageType": "thinking",
        "thinking": {"content": "hmm"},
    }
    assert (await request_(SEND, thinking, AGENT))["data"]["messageType"] == "thinking"
    r = await request_(SEND, {"conversationId": cid, "content": "x", "role": "system"}, AGENT)
    assert r["error"]["code"] == "FORBIDDEN"
    r = await request_(SEND, {"conversationId": cid, "content": "maintenance"}, service_principal())
    assert r["success"] and r["data"]["role"] == "system", r
    r = await request_(
        SEND,
        {
            "conversationId": cid,
            "content": "final",
            "role": "assistant",
            "usage": {"promptTokens": 5, "completionTokens": 5, "totalTokens": 10},
            "cost": 0.5,
        },
        service_principal(),
    )
    assert r["success"] and r["data"]["agentId"] == "agent-general", r
    got = (await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE))["data"]
    assert got["totalMessages"] == 5 and got["totalTokens"] == 10 and got["totalCost"] == 0.5
    assert got["lastMessage"]["content"] == "final" and got["lastMessage"]["role"] == "assistant"


async def test_create_notifies_participants(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    got: list[dict[str, Any]] = []

    async def cb(msg: Any) -> None:
        got.append(jsonutil.loads(msg.data))

    sub = await nc.subscribe(subjects.principal_events(PrincipalKind.USER, "u-dave"), cb=cb)
    conv = await create(
        request_, participants=["u-dave", {"id": "u-erin", "kind": "user", "role": "observer"}]
    )
    assert conv["createdBy"] == "u-alice"
    assert [(p.get("userId"), p["role"]) for p in conv["participants"]] == [
        ("u-alice", "user"),
        ("u-dave", "user"),
        ("u-erin", "observer"),
    ]
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    assert got[0]["event"] == "conversation:created" and got[0]["data"]["_id"] == conv["_id"]


async def test_starts_before_nats_is_up_and_refuses_sends_to_closed_conversations(
    store_server: StoreServer, db_name: str, tmp_path: Any
) -> None:
    late = NatsServer(tmp_path / "late-nats", port=free_port())
    svc = ConversationService(settings_for(late.url, store_server.url, db_name))
    starting = asyncio.ensure_future(svc.start())
    await asyncio.sleep(0.5)
    assert not starting.done() and not svc.ready
    await asyncio.to_thread(late.start)
    try:
        await asyncio.wait_for(starting, 30)
        assert await svc.check_ready()
        nc = await nats.connect(late.url)
        try:
            body = {"principal": ALICE, "data": {"title": "closing"}}
            r = jsonutil.loads((await nc.request(CREATE, jsonutil.dumps(body), timeout=10)).data)
            cid = r["data"]["_id"]
            body = {"principal": ALICE, "data": {"conversationId": cid, "status": "closed"}}
            r = jsonutil.loads((await nc.request(UPDATE, jsonutil.dumps(body), timeout=10)).data)
            assert r["data"]["status"] == "closed"
            body = {"principal": ALICE, "data": {"conversationId": cid, "content": "late"}}
            r = jsonutil.loads((await nc.request(SEND, jsonutil.dumps(body), timeout=10)).data)
            assert r["error"]["code"] == "CONFLICT"
        finally:
            await nc.drain()
    finally:
        await svc.stop()
        await asyncio.to_thread(late.stop)


async def test_concurrent_leaves_and_updates_lose_nothing(
    two_replicas: list[ConversationService], request_: Request
) -> None:
    people = [f"u-p{i}" for i in range(12)]
    cid = (await create(request_, participants=people))["_id"]
    leaves = [
        request_(UPDATE, {"conversationId": cid, "removeParticipants": [p]}, user(p))
        for p in people[:8]
    ]
    renames = [
        request_(UPDATE, {"conversationId": cid, "tags": [f"t{i}"]}, user(p))
        for i, p in enumerate(people[8:])
    ]
    replies = await asyncio.gather(*leaves, *renames)
    assert all(r["success"] for r in replies), [r for r in replies if not r["success"]]
    conv = (await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE))["data"]
    left = {p["userId"] for p in conv["participants"] if p.get("leftAt")}
    assert left == set(people[:8])
    assert len(conv["tags"]) == 1 and conv["tags"][0] in {"t0", "t1", "t2", "t3"}
    log = (await events_since(request_, cid))["data"]["events"]
    assert [f["seq"] for f in log] == list(range(1, 14))  # created + 12 updates


async def test_history_replies_are_cut_in_bytes_and_page_through(
    service: ConversationService, request_: Request
) -> None:
    """10 messages of ~128 KB each (1.3 MB) would be one reply over NATS's 1 MB max payload,
    never delivered. The replies are cut near 512 KB, say hasMore, and page through."""
    conv = await create(request_)
    cid = conv["_id"]
    big = "\U0001f600" * 32_000  # 32,000 characters, 128,000 bytes of UTF-8
    for i in range(10):
        r = await request_(SEND, {"conversationId": cid, "content": f"{i}{big}"[:32_000]}, ALICE)
        assert r["success"], r["error"]
    budget = service.settings.max_reply_bytes
    # Events: pages of several events, under the budget, gapless, until hasMore is false.
    seqs: list[int] = []
    after, pages = 0, 0
    while True:
        msg = await request_(
            subjects.QUERY_EVENTS_SINCE,
            None,
            raw=jsonutil.dumps(
                {"principal": ALICE, "conversationId": cid, "afterSeq": after, "limit": 1000}
            ),
        )
        assert msg["success"], msg
        page = msg["data"]["events"]
        assert page and len(jsonutil.dumps(msg)) <= budget + 4096
        seqs += [f["seq"] for f in page]
        after, pages = page[-1]["seq"], pages + 1
        if not msg["data"]["hasMore"]:
            break
        assert after < msg["data"]["lastSeq"]
    assert seqs == list(range(1, 12))  # conversation:created + 10 messages
    assert pages >= 3
    # Messages forward (afterSeq): cut at the newest end.
    got: list[int] = []
    after = 0
    while True:
        r = await request_(
            subjects.QUERY_MESSAGES_LIST, {"conversationId": cid, "afterSeq": after, "limit": 500}
        )
        assert r["success"], r
        items = r["data"]["items"]
        assert items and len(jsonutil.dumps(r)) <= budget + 4096
        got += [m["seq"] for m in items]
        after = items[-1]["seq"]
        if not r["data"]["hasMore"]:
            break
    assert got == list(range(2, 12))
    # The latest messages (no cursor): cut at the oldest end, then page back with beforeSeq.
    got = []
    before: int | None = None
    while True:
        data: dict[str, Any] = {"conversationId": cid, "limit": 500}
        if before is not None:
            data["beforeSeq"] = before
        r = await request_(subjects.QUERY_MESSAGES_LIST, data)
        assert r["success"], r
        items = r["data"]["items"]
        assert items and len(jsonutil.dumps(r)) <= budget + 4096
        got = [m["seq"] for m in items] + got
        before = items[0]["seq"]
        if not r["data"]["hasMore"]:
            break
    assert got == list(range(2, 12))
    assert r["data"]["items"][0]["content"].startswith("0")


async def test_an_old_event_log_is_folded_into_the_conversation_log(
    service: ConversationService, request_: Request
) -> None:
    """A database of before 2026-11-26: every durable frame in `events`, messages also in
    `messages`, and one message left only in `events` by a crash. The fold (run at startup)
    moves the log over once, adds the missing message and its totals, and drops `events`;
    new writes continue after the old seqs."""
    from parley_contract import envelopes
    from parley_contract.commands import ConversationCreate, MessageSend
    from parley_contract.internal import Principal
    from parley_contract.jsonutil import model_json
    from parley_conversation import domain
    from parley_conversation.documents import to_doc
    from parley_conversation.legacy import fold_legacy_event_log

    alice = Principal.model_validate(ALICE)
    conv = domain.new_conversation(alice, ConversationCreate(conversation_id="legacy-c1"))
    await service.store.insert_conversation(conv)
    cid = conv.id
    both = domain.new_message(alice, MessageSend(conversation_id=cid, content="in both"))
    both = both.model_copy(update={"seq": 2})
    lost = domain.new_message(alice, MessageSend(conversation_id=cid, content="only in events"))
    lost = lost.model_copy(update={"seq": 4})

    def old(seq: int, event: Event, data: Any) -> dict[str, Any]:
        frame = envelopes.event_frame(event, data, conversation_id=cid, seq=seq)
        return {
            "_id": f"{cid}:{seq}",
            "conversationId": cid,
            "seq": seq,
            "event": event.value,
            "frame": frame,
        }

    await service.store.legacy_events.insert_many(
        [
            old(1, Event.CONVERSATION_CREATED, {"conversationId": cid}),
            old(2, Event.MESSAGE_NEW, model_json(both)),
            old(3, Event.CONVERSATION_UPDATED, {"conversationId": cid, "title": "renamed"}),
            old(4, Event.MESSAGE_NEW, model_json(lost)),
        ]
    )
    await service.store.messages.insert_one(to_doc(both))

    added = await fold_legacy_event_log(service.store)
    assert [m.id for m in added] == [lost.id]
    log = (await events_since(request_, cid))["data"]["events"]
    assert [(f["seq"], f["event"]) for f in log] == [
        (1, "conversation:created"),
        (2, "message:new"),
        (3, "conversation:updated"),
        (4, "message:new"),
    ]
    assert log[2]["data"]["title"] == "renamed"
    assert [f["data"]["content"] for f in (log[1], log[3])] == ["in both", "only in events"]
    listed = await request_(subjects.QUERY_MESSAGES_LIST, {"conversationId": cid})
    assert [(m["content"], m["seq"]) for m in listed["data"]["items"]] == [
        ("in both", 2),
        ("only in events", 4),
    ]
    got = (await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}))["data"]
    assert got["totalMessages"] == 1 and got["lastSeq"] == 4  # the old doc had no totals
    assert got["lastMessage"]["content"] == "only in events"
    # Idempotent: a second run (another replica, a restart) finds nothing to fold.
    assert await fold_legacy_event_log(service.store) == []
    r = await request_(SEND, {"conversationId": cid, "content": "new"}, ALICE)
    assert r["success"] and r["data"]["seq"] == 5, r


async def test_durable_frames_carry_seq_in_headers(
    service: ConversationService, request_: Request, nc: Client
) -> None:
    """Gateways order durable frames by their headers without decoding them."""
    cid = (await create(request_))["_id"]
    got: asyncio.Queue[Any] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await got.put(msg)

    sub = await nc.subscribe(subjects.conversation_events(cid), cb=on_event)
    await nc.flush()
    r = await request_(SEND, {"conversationId": cid, "content": "hello"}, ALICE)
    msg = await asyncio.wait_for(got.get(), 10)
    await sub.unsubscribe()
    frame = jsonutil.loads(msg.data)
    assert msg.headers == subjects.durable_headers(
        cid, r["data"]["seq"], frame.get("epoch", 0), "message:new"
    )
    assert frame["seq"] == r["data"]["seq"]
