"""``AgentDirectory`` against a nats-server of its own (the session's server has the buckets
of other tests): with neither bucket there are no agents (not an error), and once a bridge
has written the agents bucket and an agent is connected, both are listed and served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from parley_contract import jsonutil, subjects
from parley_contract.agents import AgentDirectory
from parley_devstack.servers import NatsServer


@pytest.fixture
async def own_nc(tmp_path: Path) -> AsyncIterator[Client]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        client = await nats.connect(server.url)
        try:
            yield client
        finally:
            await client.drain()
    finally:
        server.stop()


async def test_no_buckets_no_agents_then_both_kinds(own_nc: Client) -> None:
    js = own_nc.jetstream()
    directory = AgentDirectory(js, cache_seconds=0.0)
    assert await directory.list() == []
    assert await directory.is_served("helper") is False

    agents = await js.create_key_value(KeyValueConfig(bucket=subjects.KV_AGENTS))
    value = {"agentId": "helper", "name": "Helper", "model": "m1", "instanceId": "b1"}
    await agents.put("helper.b1", jsonutil.dumps(value))
    # Only the agents bucket so far: the presence bucket's absence is no error either.
    assert [a["id"] for a in await directory.list()] == ["helper"]

    presence = await js.create_key_value(KeyValueConfig(bucket=subjects.KV_PRESENCE))
    await presence.put("agent.outside.g1", b"1")
    await presence.put("user.alice.g1", b"1")
    listed = await directory.list()
    assert [(a["id"], a["servedBy"]) for a in listed] == [
        ("helper", "bridge"),
        ("outside", "connection"),
    ]
    assert listed[0]["models"] == ["m1"]
    assert await directory.is_served("helper") is True
    assert await directory.is_served("outside") is True
    assert await directory.is_served("alice") is False
