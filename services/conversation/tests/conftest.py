"""Fixtures: conversation-service replicas on the real NATS and the real store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client

from parley_contract import jsonutil
from parley_contract.ids import new_id
from parley_conversation.service import ConversationService
from parley_conversation.settings import Settings
from parley_devstack.servers import NatsServer, StoreServer

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
