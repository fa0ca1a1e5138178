"""tool:call answered by the bridge over NATS (request/reply, queue group agent-bridge)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from parley_agent_bridge.config import Settings, load_agents
from parley_agent_bridge.metrics import Metrics
from parley_agent_bridge.service import Bridge
from parley_contract import jsonutil, subjects
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import CommandRequest, Principal
from parley_devstack.servers import NatsServer, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def bridge_nats(tmp_path: Path) -> AsyncIterator[str]:
    """A nats-server of its own with only the bridge on it (no conversation service)."""
    server = NatsServer(tmp_path / "nats").start()
    settings = Settings(nats_url=server.url, instance_id="bridge-t", presence_conversations=0)
    bridge = Bridge(settings, load_agents(settings), Metrics(), demo_delay=0)
    await bridge.start()
    try:
        assert await bridge.toolboxes["agent-demo"].wait_ready(60)  # a loaded machine is slow
        yield server.url
    finally:
        await bridge.stop()
        server.stop()


async def request(url: str, subject: str, principal: Principal, data: dict[str, Any]) -> Any:
    nc = await nats.connect(url)
    try:
        req = CommandRequest(principal=principal, data=data)
        reply = await nc.request(
            subject, jsonutil.dumps(req.model_dump(mode="json", by_alias=True)), timeout=10
        )
        return jsonutil.loads(reply.data)
    finally:
        await nc.drain()


async def test_tool_call_over_nats(bridge_nats: str) -> None:
    agent = Principal(id="agent-external", kind=PrincipalKind.AGENT, name="External")
    subject = subjects.command(Event.TOOL_CALL)
    ok = await request(
        bridge_nats, subject, agent, {"toolName": "calculator", "arguments": {"expression": "6*7"}}
    )
    assert ok["success"] is True
    assert ok["data"] == {
        "toolName": "calculator",
        "result": {"expression": "6*7", "result": 42},
        "success": True,
        "error": None,
        "executionTime": ok["data"]["executionTime"],
    }
    failed = await request(
        bridge_nats, subjects.AGENT_TOOL_CALL, agent, {"toolName": "rate_limited_api"}
    )
    assert failed["success"] is True and failed["data"]["success"] is False
    assert "rate limit" in failed["data"]["error"]
    unknown = await request(bridge_nats, subject, agent, {"toolName": "nope"})
    assert unknown["success"] is False and unknown["error"]["code"] == "NOT_FOUND"
    bad = await request(bridge_nats, subject, agent, {"toolName": ""})
    assert bad["success"] is False and bad["error"]["code"] == "VALIDATION_ERROR"


async def test_kv_heartbeat_announces_agents(bridge_nats: str) -> None:
    nc = await nats.connect(bridge_nats)
    try:
        kv = await nc.jetstream().key_value(subjects.KV_AGENTS)
        entry = await kv.get("agent-demo.bridge-t")
        assert entry.value is not None
        value = jsonutil.loads(entry.value)
        assert value["agentId"] == "agent-demo" and value["instanceId"] == "bridge-t"
    finally:
        await nc.drain()


async def test_bridge_waits_for_nats_that_starts_later(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(
        nats_url=f"nats://127.0.0.1:{port}",
        instance_id="bridge-late",
        presence_conversations=0,
        demo_agent=False,
    )
    bridge = Bridge(settings, load_agents(settings), Metrics(), demo_delay=0)
    starting = asyncio.create_task(bridge.start())
    await asyncio.sleep(1.0)
    assert not starting.done() and not bridge.ready
    server = NatsServer(tmp_path / "nats", port=port).start()
    try:
        await asyncio.wait_for(starting, 30)
        assert bridge.ready
    finally:
        await bridge.stop()
        server.stop()
