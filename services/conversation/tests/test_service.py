"""The service over a real NATS server and the real embedded store (SecantusDB): two replicas
under concurrent writes, idempotent sends, notifications, the agent turn and stop, a start
before NATS is up. Access and bad input: test_access.py; the log and history: test_history.py."""

from __future__ import annotations

import asyncio
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

from .calls import (
    AGENT,
    ALICE,
    BOB,
    CREATE,
    SEND,
    STOP,
    UPDATE,
    create,
    events_since,
    handled,
)
from .conftest import Request, serve_agents, settings_for, user

# The agents these tests assign are served (an unserved agentId is NOT_FOUND).
pytestmark = pytest.mark.usefixtures("served_agents")


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
    # Counted once each. The sends went to either replica (the plain subject, not the owner's
    # as a gateway sends them), and a replica's totals trail its writes by up to a pause
    # (totals_writer.py; a gateway's read goes to the owner, which flushes its own first:
    # docs/affinity.md). Once both replicas' totals are written the count is exact.
    await asyncio.gather(*(r.sequencer.totals.settle() for r in two_replicas))
    got = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE)
    assert got["data"]["totalMessages"] == 2


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
