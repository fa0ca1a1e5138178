"""The partition owner's authorization cache (authcache.py): access still follows membership.

Replicas on the real NATS and the real store. The owner of a conversation's partition
authorizes sends from the conversation it holds, without reading it; once a removal is
acknowledged, by whichever replica, the removed member's next send is FORBIDDEN: a removal
by another replica (its event takes the owner's next seq: the owner's insert collides and
the send is authorized again from the store), by the owner itself, across a hand-off or a
kill, and the retry of a removal whose first run was killed between the document and its
event.
"""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client

from parley_contract import jsonutil
from parley_contract.commands import ConversationUpdate
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.ids import new_id
from parley_contract.internal import Principal
from parley_contract.jsonutil import model_json
from parley_contract.models import Conversation, Participant
from parley_contract.partitions import PARTITIONS, partition_of
from parley_contract.routes import ROUTES
from parley_conversation import domain, handlers
from parley_conversation.authcache import AuthCache
from parley_conversation.sequencer import Sequencer
from parley_conversation.service import ConversationService
from parley_conversation.store import MongoStore
from parley_runtime.requests import request_bytes, unwrap

from .conftest import LEASE, StartReplica, serve_agents
from .test_affinity import owned, sample, split_evenly, until

ALICE = {"id": "u-alice", "kind": "user", "name": "u-alice"}  # the creator (owner)
BOB = {"id": "u-bob", "kind": "user", "name": "u-bob"}
COLLISIONS = "parley_conversation_seq_collisions_total"
HITS = "parley_conversation_auth_cache_hits_total"
MISSES = "parley_conversation_auth_cache_misses_total"
ENTRIES = "parley_conversation_auth_cache_entries"


async def command(nc: Client, event: Event, who: dict[str, Any], data: dict[str, Any]) -> Any:
    """A command as a gateway sends it: to the partition's subject, with a key, retried."""
    route = ROUTES[event]
    body = {"principal": who, "data": data, "idempotencyKey": new_id("k")}
    reply = await request_bytes(
        nc, route.subject_for(data), jsonutil.dumps(body), budget=10.0, attempt_timeout=0.75
    )
    return unwrap(route.subject, reply)


async def say(nc: Client, cid: str, who: dict[str, Any], text: str) -> int:
    data = {"conversationId": cid, "content": text}
    return int((await command(nc, Event.MESSAGE_SEND, who, data))["seq"])


async def refused(nc: Client, cid: str, who: dict[str, Any]) -> ErrorCode:
    with pytest.raises(ParleyError) as err:
        await say(nc, cid, who, "one more")
    return err.value.code


async def remove_bob(nc: Client, cid: str) -> None:
    data = {"conversationId": cid, "removeParticipants": ["u-bob"]}
    await command(nc, Event.CONVERSATION_UPDATE, ALICE, data)


async def with_bob(nc: Client, svc: ConversationService, cid: str) -> None:
    """A conversation of alice with bob, written through its owner ``svc`` until the
    owner authorizes bob's sends from its cache."""
    await command(
        nc, Event.CONVERSATION_CREATE, ALICE, {"conversationId": cid, "participants": ["u-bob"]}
    )
    auth = svc.sequencer.auth
    assert auth is not None
    for k in range(3):
        await say(nc, cid, BOB, f"hello {k}")
    hits, misses = sample(svc, HITS), sample(svc, MISSES)
    await say(nc, cid, BOB, "from the cache")
    assert sample(svc, HITS) == hits + 1  # no read of the conversation for that one
    assert sample(svc, MISSES) == misses
    assert (sample(svc, HITS), sample(svc, MISSES)) == (auth.hits, auth.misses)  # /metrics
    assert sample(svc, ENTRIES) == len(auth) >= 1


def cid_owned_by(svc: ConversationService) -> str:
    while True:
        cid = new_id("c")
        if partition_of(cid) in owned(svc):
            return cid


async def refused_stored(svc: ConversationService, cid: str) -> int:
    """How many of the refused sends ("one more") are in the log anyway."""
    return int(
        await svc.store.messages.count_documents({"conversationId": cid, "content": "one more"})
    )


async def test_a_removal_by_another_replica_reaches_the_owners_cache(
    nc: Client, start_replica: StartReplica
) -> None:
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    b = await start_replica()
    await until(lambda: split_evenly(a, b))
    cid = cid_owned_by(b)
    await with_bob(nc, b, cid)
    # Replica a removes bob (as on the plain subject, which any replica serves): the
    # owner b never sees the command.
    alice = Principal(id="u-alice", kind=PrincipalKind.USER)
    cmd = ConversationUpdate.model_validate(
        {"conversationId": cid, "removeParticipants": ["u-bob"]}
    )
    await handlers.conversation_update(a, alice, cmd)
    collisions = sample(b, COLLISIONS)
    assert await refused(nc, cid, BOB) is ErrorCode.FORBIDDEN
    assert sample(b, COLLISIONS) == collisions + 1  # b's cached seq was the removal's
    assert await refused_stored(b, cid) == 0
    assert await say(nc, cid, ALICE, "still here") > 0  # the others go on


async def test_a_removal_by_the_owner_itself(nc: Client, start_replica: StartReplica) -> None:
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    cid = new_id("c")
    await with_bob(nc, a, cid)
    await remove_bob(nc, cid)  # the owner stores the removal's event itself: no collision
    assert await refused(nc, cid, BOB) is ErrorCode.FORBIDDEN
    await command(nc, Event.CONVERSATION_DELETE, ALICE, {"conversationId": cid})
    assert await refused(nc, cid, ALICE) is ErrorCode.NOT_FOUND  # deleted, also cached


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_removal_across_a_hand_off(
    nc: Client, start_replica: StartReplica, how: str
) -> None:
    """a caches bob's conversations; b joins and takes some of them, bob is removed there
    (b is the owner), b goes away (a graceful stop, or a kill: its leases expire) and the
    partitions come back to a, which must not authorize bob from what it held before."""
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    cids = [new_id("c") for _ in range(8)]
    for cid in cids:
        await with_bob(nc, a, cid)
    b = await start_replica()
    await until(lambda: split_evenly(a, b))
    moved = [cid for cid in cids if partition_of(cid) in owned(b)]
    assert moved, "no conversation moved (8 of 64 partitions: very unlikely)"
    assert a.sequencer.auth is not None
    assert len(a.sequencer.auth) == len(cids) - len(moved)  # given up with the partitions
    for cid in moved:
        await remove_bob(nc, cid)
    if how == "stop":
        await b.stop()
    else:
        assert b.ownership is not None
        await b.ownership.abandon()
        await b.broker.connection.close()
    await until(lambda: owned(a) == set(range(PARTITIONS)), within=LEASE * 4 + 5)
    for cid in moved:
        assert await refused(nc, cid, BOB) is ErrorCode.FORBIDDEN
    kept = [cid for cid in cids if cid not in moved]
    for cid in kept:
        assert await say(nc, cid, BOB, "still a member") > 0


async def test_the_retry_of_a_removal_killed_before_its_event(
    nc: Client, start_replica: StartReplica
) -> None:
    """A first run (the whole participant list, without bob) wrote the document and died
    before the conversation:updated event; its retry (same principal, a key) changes
    nothing, yet stores the event: else the owner's cache (and every gateway's audience)
    would never learn the removal."""
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    cid = new_id("c")
    await with_bob(nc, a, cid)
    conv = await a.store.get_conversation(cid, with_totals=False)
    assert conv is not None
    gone = [
        p.model_copy(update={"left_at": conv.updated_at}) if p.user_id == "u-bob" else p
        for p in conv.participants
    ]
    first_run = conv.model_copy(update={"participants": gone, "updated_by": "u-alice"})
    assert all(isinstance(p, Participant) for p in gone)
    assert await a.store.update_conversation(conv, first_run)  # killed here
    last = await a.store.last_seq(cid)
    data = {"conversationId": cid, "participants": ["u-alice"]}
    await command(nc, Event.CONVERSATION_UPDATE, ALICE, data)  # the retry
    events = await a.store.events_since(cid, last, None, 10)
    assert [e["event"] for e in events] == [Event.CONVERSATION_UPDATED.value]
    assert await refused(nc, cid, BOB) is ErrorCode.FORBIDDEN


async def test_a_seq_cache_reloaded_is_a_cache_dropped(
    nc: Client, start_replica: StartReplica
) -> None:
    """The store's connection pool was cleared (its cached next seqs dropped): the next
    seq comes from the log again, which may hold another writer's removal; what the owner
    held before is not used."""
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    cid = new_id("c")
    await with_bob(nc, a, cid)
    a.store.forget_seqs()
    other = MongoStore(a.settings.mongodb_url, a.settings.mongodb_database)
    await other.init()
    try:
        conv = await other.get_conversation(cid, with_totals=False)
        assert conv is not None
        alice = Principal(id="u-alice", kind=PrincipalKind.USER)
        cmd = ConversationUpdate.model_validate(
            {"conversationId": cid, "removeParticipants": ["u-bob"]}
        )
        new = domain.apply_update(conv, alice, cmd).conversation
        assert await other.update_conversation(conv, new)

        async def nowhere(subject: str, payload: bytes) -> None:
            return None

        def build(seq: int) -> Any:
            return model_json(new.model_copy(update={"last_seq": seq}))

        await Sequencer(other, nowhere).append(cid, Event.CONVERSATION_UPDATED, build)
    finally:
        await other.close()
    assert await refused(nc, cid, BOB) is ErrorCode.FORBIDDEN
    assert await refused_stored(a, cid) == 0


async def test_an_agent_switched_away_through_another_replica_cannot_answer(
    nc: Client, start_replica: StartReplica
) -> None:
    """The conversation's agent is replaced through replica a while b owns the partition
    (and holds the conversation with the old agent): the old agent's next answer is
    FORBIDDEN, the new agent's is stored."""
    a = await start_replica()
    await until(lambda: owned(a) == set(range(PARTITIONS)))
    b = await start_replica()
    await until(lambda: split_evenly(a, b))
    await serve_agents(nc, "agent-x", "agent-y")
    cid = cid_owned_by(b)
    data = {"conversationId": cid, "participants": ["u-bob"], "agentId": "agent-x"}
    await command(nc, Event.CONVERSATION_CREATE, ALICE, data)
    x = {"id": "agent-x", "kind": "agent", "name": "agent-x"}
    answer = {"conversationId": cid, "content": "an answer", "role": "assistant"}
    for _ in range(3):
        assert (await command(nc, Event.MESSAGE_SEND, x, answer))["agentId"] == "agent-x"
    assert sample(b, HITS) > 0
    alice = Principal(id="u-alice", kind=PrincipalKind.USER)
    switch = ConversationUpdate.model_validate({"conversationId": cid, "agentId": "agent-y"})
    await handlers.conversation_update(a, alice, switch)
    with pytest.raises(ParleyError) as err:
        await command(nc, Event.MESSAGE_SEND, x, answer)
    assert err.value.code is ErrorCode.FORBIDDEN
    y = {"id": "agent-y", "kind": "agent", "name": "agent-y"}
    assert (await command(nc, Event.MESSAGE_SEND, y, answer))["agentId"] == "agent-y"


def test_the_cache_keeps_the_most_recently_used() -> None:
    """Bounded: beyond its size the least recently used entry goes."""
    conv = Conversation.model_construct(id="c", conversation_id="c", title="t")
    auth = AuthCache(lambda _cid: 7, lambda _cid: True, size=2)
    for cid in ("a", "b"):
        auth.commit(cid, conv, 7, 0)
    assert auth.lookup("a") == (conv, 7)  # "b" is the least recently used now
    auth.commit("c", conv, 7, 0)
    assert len(auth) == 2 and auth.lookup("b") is None
    assert auth.lookup("a") is not None and auth.lookup("c") is not None


async def test_a_join_on_the_owner_fills_its_cache(nc: Client, start_replica: StartReplica) -> None:
    """The owner keeps the conversation a join read: the first send after it is authorized
    without a read; a removal after the join still refuses the removed member."""
    svc = await start_replica()
    cid = cid_owned_by(svc)
    await command(
        nc, Event.CONVERSATION_CREATE, ALICE, {"conversationId": cid, "participants": ["u-bob"]}
    )
    await command(nc, Event.CONVERSATION_JOIN, BOB, {"conversationId": cid})
    hits, misses = sample(svc, HITS), sample(svc, MISSES)
    await say(nc, cid, BOB, "first")
    assert (sample(svc, HITS), sample(svc, MISSES)) == (hits + 1, misses)
    await command(nc, Event.CONVERSATION_JOIN, BOB, {"conversationId": cid})
    await remove_bob(nc, cid)
    assert await refused(nc, cid, BOB) is ErrorCode.FORBIDDEN
