"""Conversation affinity (docs/affinity.md): partitions owned through leases in NATS KV.

Replicas on the real NATS and the real store: two split the partitions, a join rebalances,
an abrupt stop (its leases left to expire) hands everything to the survivor while writes go
on with no seq gap or duplicate, and a forced collision is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client
from prometheus_client import generate_latest

from parley_contract import jsonutil, subjects
from parley_contract.commands import MessageSend
from parley_contract.events import Event, PrincipalKind
from parley_contract.ids import new_id
from parley_contract.internal import Principal
from parley_contract.partitions import PARTITIONS, lease_key, partition_of
from parley_contract.routes import QUERY_ROUTE, ROUTES, query_route_of_subject, route_of_subject
from parley_conversation import domain
from parley_conversation.ownership import plan
from parley_conversation.sequencer import Sequencer
from parley_conversation.service import ConversationService
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer
from parley_runtime.requests import request_bytes, unwrap

from .conftest import LEASE, StartReplica

ALICE = {"id": "u-alice", "kind": "user", "name": "u-alice"}
SEND = ROUTES[Event.MESSAGE_SEND]


def test_plan_is_fair_and_moves_few_partitions() -> None:
    two = plan(["b", "a"])
    assert sorted(two) == list(range(PARTITIONS))
    assert sorted(list(two.values()).count(m) for m in "ab") == [32, 32]
    three = plan(["a", "b", "c"])
    shares = sorted(list(three.values()).count(m) for m in "abc")
    assert shares[-1] - shares[0] <= 1 and sum(shares) == PARTITIONS
    # A third member takes about a third; the others keep most of what they had.
    moved = sum(1 for p in range(PARTITIONS) if two[p] != three[p])
    assert moved <= PARTITIONS // 3 + 4
    assert plan(["a"]) == dict.fromkeys(range(PARTITIONS), "a")


def test_partition_subjects_come_from_the_route_table() -> None:
    assert partition_of("c-1") == partition_of("c-1") < PARTITIONS
    data = {"conversationId": "c-1", "content": "hi"}
    p = partition_of("c-1")
    assert SEND.subject_for(data) == subjects.partition_command(Event.MESSAGE_SEND, p)
    assert SEND.subject_for({"content": "no id"}) == SEND.subject  # any replica validates
    assert SEND.subject_for({"conversationId": 42}) == SEND.subject
    assert SEND.subject_for("not a dict") == SEND.subject
    assert not ROUTES[Event.CONVERSATION_JOIN].partitioned  # reads: any replica
    hostile = {"conversationId": "a.b.>*"}  # never reaches the subject: a number does
    assert SEND.subject_for(hostile).startswith(f"{subjects.PREFIX}.cmd.p")
    # Reads of one conversation go to its owner too, under the partition's subjects.
    get = QUERY_ROUTE[subjects.QUERY_CONVERSATION_GET]
    to = get.subject_for(data)
    assert to == f"{subjects.PREFIX}.cmd.p{p}.q.conversation.get"
    assert query_route_of_subject(to) is get and route_of_subject(to) is None
    assert get.subject_for({"conversationId": 42}) == get.subject
    assert get.subject_for(hostile).startswith(f"{subjects.PREFIX}.cmd.p")
    listing = QUERY_ROUTE[subjects.QUERY_CONVERSATIONS_LIST]  # many conversations: any replica
    assert not listing.partitioned and listing.subject_for(data) == listing.subject


async def until(check: Callable[[], bool], within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def owned(svc: ConversationService) -> set[int]:
    return set(svc.partitions.owned)


def split_evenly(a: ConversationService, b: ConversationService) -> bool:
    return owned(a) | owned(b) == set(range(PARTITIONS)) and len(owned(a)) == len(owned(b))


def sample(svc: ConversationService, name: str, labels: dict[str, str] | None = None) -> float:
    return svc.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def send(nc: Client, cid: str, k: int) -> int:
    """message:send as a gateway sends it: to the partition's subject, retried."""
    data = {"conversationId": cid, "content": f"m{k}", "clientMessageId": f"{cid}-{k}"}
    body = {"principal": ALICE, "data": data, "idempotencyKey": f"{cid}-{k}"}
    reply = await request_bytes(
        nc, SEND.subject_for(data), jsonutil.dumps(body), budget=10.0, attempt_timeout=0.75
    )
    stored = unwrap(SEND.subject, reply)
    return int(stored["seq"])


async def create(nc: Client, cid: str) -> None:
    route = ROUTES[Event.CONVERSATION_CREATE]
    data = {"conversationId": cid, "participants": ["u-bob"]}
    body = {"principal": ALICE, "data": data, "idempotencyKey": f"create-{cid}"}
    reply = await request_bytes(
        nc, route.subject_for(data), jsonutil.dumps(body), budget=10.0, attempt_timeout=0.75
    )
    unwrap(route.subject, reply)


async def stored_seqs(svc: ConversationService, cid: str) -> list[int]:
    docs = await svc.store.messages.find({"conversationId": cid}, {"seq": 1}).to_list()
    return sorted(int(d["seq"]) for d in docs)


async def test_two_replicas_split_then_a_crash_hands_everything_over(
    nc: Client,
    start_replica: StartReplica,
) -> None:
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))  # alone: every partition
    b = await start_replica()
    await until(lambda: split_evenly(a, b))  # the join: a hands half off, b takes it
    assert owned(a).isdisjoint(owned(b))
    assert sample(b, "parley_conversation_owned_partitions") == PARTITIONS // 2
    assert sample(a, "parley_conversation_partition_moves_total", {"how": "released"}) >= 1

    # Conversations on both sides, written by their owners only.
    on_a: list[str] = []
    on_b: list[str] = []
    while len(on_a) < 4 or len(on_b) < 4:
        cid = new_id("c")
        side = on_a if partition_of(cid) in owned(a) else on_b
        if len(side) < 4:
            side.append(cid)
    cids = on_a + on_b
    for cid in cids:
        await create(nc, cid)
    acked: dict[str, list[int]] = {cid: [] for cid in cids}
    stop = asyncio.Event()

    async def writer(cid: str) -> None:
        k = 0
        while not stop.is_set():
            k += 1
            acked[cid].append(await send(nc, cid, k))

    tasks = [asyncio.create_task(writer(cid)) for cid in cids]
    try:
        await until(lambda: all(len(v) >= 5 for v in acked.values()))
        # a dies abruptly: its connection goes, its leases are not released (they expire).
        assert a.ownership is not None
        await a.ownership.abandon()
        await a.broker.connection.close()
        before = {cid: len(v) for cid, v in acked.items()}
        await until(lambda: owned(b) == set(range(PARTITIONS)), within=LEASE * 4 + 5)
        await until(lambda: all(len(acked[c]) >= before[c] + 5 for c in cids))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert sample(b, "parley_conversation_partition_moves_total", {"how": "acquired"}) >= 64
    for cid in cids:
        seqs = await stored_seqs(b, cid)
        assert seqs == list(range(1, len(seqs) + 1)), f"gap or duplicate in {cid}"
        assert sorted(acked[cid]) == sorted(set(acked[cid]))  # each ack its own seq
        assert set(acked[cid]) <= set(seqs)  # every acked message is stored
        assert len(seqs) == 1 + len(acked[cid])  # conversation:created + one per send
    # Each conversation had one writer at a time, except around the crash.
    assert sample(b, "parley_conversation_seq_collisions_total") <= len(cids)


async def test_a_conversation_read_right_after_a_send_sees_it_through_the_owner(
    nc: Client, start_replica: StartReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's path for GET /v1/conversations/{id} with two replicas: the read goes to
    the owner of the conversation's partition, whose totals are read-your-writes; any other
    replica would answer with totals the owner has not written yet (its totals writer runs
    behind the log, here slowed down as under load)."""
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    b = await start_replica()
    await until(lambda: split_evenly(a, b))
    for svc in (a, b):
        write = svc.store.add_totals

        async def late(batch: Any, write: Any = write) -> None:
            await asyncio.sleep(0.3)
            await write(batch)

        monkeypatch.setattr(svc.store, "add_totals", late)
    cid = next(c for c in (new_id("c") for _ in range(1000)) if partition_of(c) in owned(a))
    await create(nc, cid)
    get = QUERY_ROUTE[subjects.QUERY_CONVERSATION_GET]
    data = {"conversationId": cid}
    body = jsonutil.dumps({"principal": ALICE, "data": data})
    for k in range(1, 9):
        await send(nc, cid, k)
        reply = await request_bytes(
            nc, get.subject_for(data), body, budget=10.0, attempt_timeout=0.75, fallback=get.subject
        )
        assert unwrap(get.subject, reply)["totalMessages"] == k
    # No owner for a moment (a's partitions released, b not yet holding them): the read
    # falls back to any replica at once.
    assert a.ownership is not None
    await a.ownership.stop()
    reply = await request_bytes(
        nc, get.subject_for(data), body, budget=10.0, attempt_timeout=0.75, fallback=get.subject
    )
    assert unwrap(get.subject, reply)["_id"] == cid


async def test_each_owner_applies_the_delivery_reports_of_its_conversations(
    nc: Client, start_replica: StartReplica
) -> None:
    """Every replica gets every gateway's report and applies the conversations it owns: the
    messages are marked by the replica that wrote them (which reads nothing for them), not
    by whichever replica the report reached (which read them back, both replicas every
    conversation)."""
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    b = await start_replica()
    await until(lambda: split_evenly(a, b))
    ids = (new_id("c") for _ in range(1000))
    on_a = next(c for c in ids if partition_of(c) in owned(a))
    on_b = next(c for c in ids if partition_of(c) in owned(b))
    items = []
    for cid in (on_a, on_b):
        await create(nc, cid)
        for k in (1, 2):
            seq = await send(nc, cid, k)
        items.append({"conversationId": cid, "kind": "user", "principalId": "u-bob", "seq": seq})
    await nc.publish(subjects.INTERNAL_DELIVERY, jsonutil.dumps({"items": items}))

    async def statuses() -> set[str]:
        # As read (the delivery watermark: protocol 3.6), from either replica's store.
        found = set()
        for cid in (on_a, on_b):
            items, _ = await a.store.list_messages(cid, None, None, 10)
            found |= {m.message_status for m in items if m.role == "user"}
        return {str(s) for s in found}

    deadline = asyncio.get_running_loop().time() + 10
    while await statuses() != {"delivered"}:
        assert asyncio.get_running_loop().time() < deadline, await statuses()
        await asyncio.sleep(0.1)
    assert a.receipts.delivery.tracks(on_a) and not a.receipts.delivery.tracks(on_b)
    assert b.receipts.delivery.tracks(on_b) and not b.receipts.delivery.tracks(on_a)


async def test_a_report_for_a_killed_owner_is_applied_by_the_replica_that_takes_over(
    nc: Client, start_replica: StartReplica
) -> None:
    """The owner is killed before it applies a report (here: before it could even get it):
    the other replica, which is not the owner when the report comes, holds it and applies it
    when it takes the partition, so the conversation's last message turns ``delivered``
    though the conversation stays quiet (before: dropped, the message stayed ``sent``)."""
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    b = await start_replica()
    await until(lambda: split_evenly(a, b))
    cid = next(c for c in (new_id("c") for _ in range(1000)) if partition_of(c) in owned(a))
    await create(nc, cid)
    seq = await send(nc, cid, 1)
    assert a.ownership is not None
    await a.ownership.abandon()  # killed: its leases stay until they expire
    await a.broker.connection.close()
    item = {"conversationId": cid, "kind": "user", "principalId": "u-bob", "seq": seq}
    await nc.publish(subjects.INTERNAL_DELIVERY, jsonutil.dumps({"items": [item]}))
    await until(lambda: partition_of(cid) in owned(b), within=LEASE * 4 + 5)

    async def status() -> str:
        items, _ = await b.store.list_messages(cid, seq - 1, None, 1)
        return str(items[0].message_status)

    deadline = asyncio.get_running_loop().time() + 10
    while await status() != "delivered":
        assert asyncio.get_running_loop().time() < deadline, await status()
        await asyncio.sleep(0.1)


async def test_a_forced_collision_is_counted_and_retried(
    store_server: StoreServer,
    db_name: str,
    nc: Client,
    start_replica: StartReplica,
) -> None:
    svc = await start_replica()
    await until(lambda: owned(svc) == set(range(PARTITIONS)))
    cid = new_id("c")
    await create(nc, cid)
    assert await send(nc, cid, 1) == 2  # the owner caches seq 3 as next
    # Another writer (a second replica's store and sequencer, with its own cache) takes 3.
    other = MongoStore(store_server.url, db_name)
    await other.init()

    async def nowhere(subject: str, payload: bytes) -> None:
        return None

    alice = Principal(id="u-alice", kind=PrincipalKind.USER)
    cmd = MessageSend(conversation_id=cid, content="elsewhere")
    try:
        res = await Sequencer(other, nowhere).send(alice, domain.new_message(alice, cmd))
    finally:
        await other.close()
    assert res.seq == 3
    assert sample(svc, "parley_conversation_seq_collisions_total") == 0
    assert await send(nc, cid, 2) == 4  # the owner's seq 3 collided: retried with 4
    assert sample(svc, "parley_conversation_seq_collisions_total") == 1
    assert await stored_seqs(svc, cid) == [1, 2, 3, 4]
    exposed = generate_latest(svc.metrics.registry).decode()
    assert "parley_conversation_seq_collisions_total 1.0" in exposed
    assert f"parley_conversation_owned_partitions {float(PARTITIONS)}" in exposed


async def test_a_short_snapshot_of_the_leases_does_not_drop_them(
    nc: Client,
    start_replica: StartReplica,
) -> None:
    """A watch of the bucket read short (as during a JetStream leader election) shows no
    lease at all: the replica keeps what its compare-and-set refresh proves it still holds,
    and drops only a lease that moved to someone else."""
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    ownership = a.ownership
    assert ownership is not None
    moved = 7
    kv = await nc.jetstream().key_value(subjects.KV_PARTITIONS)
    await kv.put(lease_key(moved), b"another-replica")  # taken over behind a's back

    async def short_snapshot() -> tuple[set[str], dict[int, tuple[str, int]]]:
        return {ownership.member}, {}

    ownership._snapshot = short_snapshot  # type: ignore[method-assign]
    await ownership.tick()
    assert owned(a) == set(range(PARTITIONS)) - {moved}
    assert sample(a, "parley_conversation_partition_moves_total", {"how": "lost"}) == 1


async def test_the_snapshot_is_whole_while_keys_are_rewritten(
    nc: Client,
    start_replica: StartReplica,
) -> None:
    """nats-py's watcher can end its initial values early under concurrent writes (every
    lease then looked "held by nobody"); the snapshot reads the bucket whole each time while
    a key of it is rewritten (not a member's: that would move partitions meanwhile)."""
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    ownership = a.ownership
    assert ownership is not None
    kv = await nc.jetstream().key_value(subjects.KV_PARTITIONS)
    stop = asyncio.Event()

    async def heartbeat() -> None:
        while not stop.is_set():
            await kv.put("rewritten", b"1")

    writer = asyncio.create_task(heartbeat())
    try:
        snapshots = [await ownership._snapshot() for _ in range(30)]
    finally:
        stop.set()
        await writer
    for members, leases in snapshots:
        assert members == {ownership.member}
        assert set(leases) == set(range(PARTITIONS))
        assert {holder for holder, _ in leases.values()} == {ownership.member}
