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
    agent = Principal(id="agent-demo", kind=PrincipalKind.AGENT, name="Demo")
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


CALC = {"toolName": "calculator", "arguments": {"expression": "6*7"}}


async def test_an_agent_calls_only_its_own_tools(bridge_nats: str) -> None:
    """Issue 12, finding 6: any agent token could run another agent's tools."""
    subject = subjects.command(Event.TOOL_CALL)
    other = Principal(id="agent-other", kind=PrincipalKind.AGENT)
    r = await request(bridge_nats, subject, other, {**CALC, "agentId": "agent-demo"})
    assert r["success"] is False and r["error"]["code"] == "FORBIDDEN", r
    # Without naming one: its own tools, and it has none here (no fallback to the demo's).
    r = await request(bridge_nats, subject, other, CALC)
    assert r["success"] is False and r["error"]["code"] == "NOT_FOUND", r
    user = Principal(id="agent-demo", kind=PrincipalKind.USER)  # a user named like the agent
    r = await request(bridge_nats, subjects.AGENT_TOOL_CALL, user, CALC)
    assert r["success"] is False and r["error"]["code"] == "FORBIDDEN", r
    service = Principal(id="svc-x", kind=PrincipalKind.SERVICE)
    r = await request(
        bridge_nats, subjects.AGENT_TOOL_CALL, service, {**CALC, "agentId": "agent-demo"}
    )
    assert r["success"] is True and r["data"]["result"]["result"] == 42, r
    own = Principal(id="agent-demo", kind=PrincipalKind.AGENT)
    r = await request(bridge_nats, subject, own, {**CALC, "agentId": "agent-demo"})
    assert r["success"] is True and r["data"]["success"] is True, r


async def test_a_slow_tool_call_blocks_nobody_and_is_cut_by_the_timeout(bridge_nats: str) -> None:
    """Finding 5: one slow call held the others up. The demo tools' timeout is 5 s."""
    agent = Principal(id="agent-demo", kind=PrincipalKind.AGENT)
    subject = subjects.command(Event.TOOL_CALL)
    slow = asyncio.create_task(
        request(bridge_nats, subject, agent, {"toolName": "sleep", "arguments": {"seconds": 60}})
    )
    await asyncio.sleep(0.5)  # the slow call is running on the bridge and the tool server
    for _ in range(3):
        r = await request(bridge_nats, subject, agent, CALC)
        assert r["success"] is True and r["data"]["result"]["result"] == 42, r
        assert not slow.done()
    bomb = {"toolName": "calculator", "arguments": {"expression": "(((9**99)**99)**99)**3"}}
    r = await request(bridge_nats, subject, agent, bomb)
    assert r["success"] is True and r["data"]["success"] is False
    assert "too large" in r["data"]["error"]
    assert not slow.done()
    timed_out = await slow
    assert timed_out["data"]["success"] is False and "timed out" in timed_out["data"]["error"]


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
