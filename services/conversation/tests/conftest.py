"""Fixtures: conversation-service replicas on the real NATS and the real store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from parley_contract import jsonutil
from parley_contract.events import Event
from parley_contract.ids import new_id
from parley_contract.models import Message
from parley_conversation.entries import PendingEvent, message_as_stored
from parley_conversation.service import ConversationService
from parley_conversation.settings import Settings
from parley_conversation.store import MongoStore
from parley_devstack.servers import NatsServer, StoreServer
from parley_runtime import tasks

logger = logging.getLogger(__name__)

Request = Callable[..., Awaitable[dict[str, Any]]]


def settings_for(nats_url: str, mongodb_url: str, db: str, **extra: Any) -> Settings:
    return Settings(
        nats_url=nats_url,
        mongodb_url=mongodb_url,
        mongodb_database=db,
        instance_id=new_id("test"),
        drain_seconds=10,
        **extra,
    )


async def request_reply(
    nc: Client, subject: str, body: bytes, wait: float = 10.0
) -> dict[str, Any]:
    """A request and its decoded reply envelope. No retry of "no responders": a replica
    answers from the moment start() returns (test_start.py)."""
    msg = await nc.request(subject, body, timeout=wait)
    reply: dict[str, Any] = jsonutil.loads(msg.data)
    return reply


def message_pending(m: Message) -> PendingEvent:
    """How the sequencer hands a message to the log."""
    return PendingEvent(
        Event.MESSAGE_NEW,
        None,
        m.client_message_id,
        message=lambda seq: message_as_stored(m, seq),
    )


@contextlib.asynccontextmanager
async def fresh_store(url: str, prefix: str) -> AsyncIterator[MongoStore]:
    """A store on a database of its own (``<prefix>_<random>``), initialized; dropped at the
    end."""
    db = f"{prefix}_{uuid.uuid4().hex[:12]}"
    s = MongoStore(url, db)
    await s.init()
    try:
        yield s
    finally:
        await s._client.drop_database(db)
        await s.close()


@pytest.fixture
async def service(
    nats_server: NatsServer, store_server: StoreServer, db_name: str
) -> AsyncIterator[ConversationService]:
    svc = ConversationService(settings_for(nats_server.url, store_server.url, db_name))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
def request_(nc: Client) -> Request:
    """Send a request like a gateway does; returns the decoded reply envelope."""

    async def send(
        subject: str,
        data: Any,
        principal: dict[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        wait: float = 10.0,
    ) -> dict[str, Any]:
        body = raw
        if body is None:
            body = jsonutil.dumps(
                {"principal": principal or {"id": "u-alice", "kind": "user"}, "data": data}
            )
        return await request_reply(nc, subject, body, wait)

    return send


def user(pid: str) -> dict[str, Any]:
    return {"id": pid, "kind": "user", "name": pid}


def agent(pid: str) -> dict[str, Any]:
    return {"id": pid, "kind": "agent", "name": pid}


def service_principal() -> dict[str, Any]:
    return {"id": "svc-test", "kind": "service"}


async def serve_agents(nc: Client, *agent_ids: str) -> None:
    """Announce agents in the agents KV as an agent bridge does (conversations may only be
    given an agentId that someone serves)."""
    import nats.js.errors
    from nats.js.api import KeyValueConfig

    from parley_contract import subjects

    js = nc.jetstream()
    try:
        kv = await js.key_value(subjects.KV_AGENTS)
    except nats.js.errors.BucketNotFoundError:
        kv = await js.create_key_value(KeyValueConfig(bucket=subjects.KV_AGENTS, history=1, ttl=30))
    for agent_id in agent_ids:
        value = {"agentId": agent_id, "name": agent_id, "model": "m", "instanceId": "tests"}
        await kv.put(f"{agent_id}.tests", jsonutil.dumps(value))


@pytest.fixture
async def served_agents(nc: Client) -> AsyncIterator[None]:
    """The agents these tests assign are served (an unserved agentId is NOT_FOUND), and stay
    so: announced again every second as a bridge does, or a test that outlasts the agent
    watch's dead-after window (a busy machine) gets "agent offline" notices in its log.

    The refresh loop is tasks.every and ends with tasks.cancel_all, as a service's loops do:
    a plain ``while True`` loop around the KV puts hung the teardown for good (pytest's
    120 s timeout, 1 run in 9 under load) when the cancel came with a put's reply, which
    nats-py's wait_for swallows on Python 3.11 (parley_runtime.tasks.cancellable); and a put
    timing out on a busy machine failed the test in teardown."""
    await serve_agents(nc, "agent-general", "agent-code")
    refresh = asyncio.create_task(
        tasks.every(
            1.0,
            lambda: serve_agents(nc, "agent-general", "agent-code"),
            what="announcing the test agents",
            expected=(nats.errors.Error, nats.js.errors.Error, TimeoutError),
            log=logger,
        )
    )
    yield
    await tasks.cancel_all([refresh])


@contextlib.asynccontextmanager
async def replicas_running(
    n: int, nats_server: NatsServer, store_server: StoreServer, db_name: str, **extra: Any
) -> AsyncIterator[list[ConversationService]]:
    """``n`` replicas started together (settings ``extra``), stopped together."""
    replicas = [
        ConversationService(settings_for(nats_server.url, store_server.url, db_name, **extra))
        for _ in range(n)
    ]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        yield replicas
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))


@pytest.fixture
async def two_replicas(
    nats_server: NatsServer, store_server: StoreServer, db_name: str
) -> AsyncIterator[list[ConversationService]]:
    async with replicas_running(2, nats_server, store_server, db_name) as replicas:
        yield replicas


@pytest.fixture
async def two_patient_replicas(
    nats_server: NatsServer, store_server: StoreServer, db_name: str
) -> AsyncIterator[list[ConversationService]]:
    """Two replicas that never shed load (max_wait 0): for tests of sequencing under a burst,
    which a busy machine with durable (fsynced) commits could otherwise turn into refusals."""
    async with replicas_running(
        2, nats_server, store_server, db_name, max_wait_seconds=0
    ) as replicas:
        yield replicas


# Conversation affinity's tests (test_affinity.py, test_authcache.py): a short lease, so that
# a killed replica's partitions move within ~1.25 s (+ a tick).
LEASE = 1.0

StartReplica = Callable[[], Awaitable[ConversationService]]


def replica(nats: NatsServer, store: StoreServer, db: str) -> ConversationService:
    return ConversationService(
        settings_for(nats.url, store.url, db, lease_seconds=LEASE, max_wait_seconds=0)
    )


@pytest.fixture
async def start_replica(
    nats_server: NatsServer, store_server: StoreServer, db_name: str
) -> AsyncIterator[StartReplica]:
    """Start one more replica on the test's servers; the ones still running (not stopped,
    not killed: connected) stop at the end."""
    started: list[ConversationService] = []

    async def start() -> ConversationService:
        svc = replica(nats_server, store_server, db_name)
        started.append(svc)
        await svc.start()
        return svc

    yield start
    for svc in started:
        if svc.ready and svc.broker.connection.is_connected:
            await svc.stop()
