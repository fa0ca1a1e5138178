"""End to end through a real gateway, conversation service, agent bridge, NATS and store:
the agents besides the scripted model's turns (test_e2e_flows.py): the demo agent offline
with its MCP tools, the agents counted for scaling, tool:call from an agent, an external
agent process on the gateway, and switching a conversation's agent."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from parley_agent_bridge.openai_stub import OpenAIStub, Step
from parley_client.testing import WsClient
from parley_contract.events import PrincipalKind
from parley_devstack.servers import ManagedProcess
from parley_devstack.stack import Stack

LLM_AGENT = "agent-llm"  # configured by conftest.agents_file
Connect = Callable[..., Awaitable[WsClient]]
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

pytestmark = pytest.mark.timeout(180)


def kinds(msgs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["messageType"]) for m in msgs]


async def test_demo_agent_offline_walkthrough(stack: Stack, connect: Connect) -> None:
    """agent-demo (configured by default) with the bundled MCP tools over stdio."""
    client = await connect(stack)
    conv = await client.conversation("agent-demo")
    hello = await client.send(conv, "hello there")
    final = await client.answer(hello)
    assert kinds(client.turn_messages(hello)) == [("assistant", "thinking"), ("assistant", "text")]
    assert "demo agent" in final["content"]
    search = await client.send(conv, "search the news, then calc 12 * 7")
    final = await client.answer(search)
    assert kinds(client.turn_messages(search)) == [
        ("assistant", "tool_call"),
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]
    assert "OpenAI Releases GPT-5" in final["content"] and "12 * 7 = 84" in final["content"]
    failing = await client.send(conv, "make it fail")
    final = await client.answer(failing)
    result = client.turn_messages(failing)[1]["toolResults"][0]
    assert result["success"] is False and "rate limit" in result["error"]
    assert final["content"].startswith("I apologize")
    conversation = await client.http_get(f"/v1/conversations/{conv}")
    assert conversation["totalCost"] > 0 and conversation["totalTokens"] > 0


async def test_scaling_counts_bridge_agents(stack: Stack, connect: Connect) -> None:
    client = await connect(stack)
    scaling = await client.http_get("/v1/scaling")
    assert scaling["agents"] >= 2  # agent-demo and agent-llm, from the bridge's KV heartbeats


async def test_tool_call_command_runs_the_agents_tool(stack: Stack, connect: Connect) -> None:
    """tool:call from an agent connected to the gateway: the bridge runs the tool (MCP)."""
    agent = await connect(stack, LLM_AGENT, PrincipalKind.AGENT)
    reply = await agent.call(
        "tool:call", {"toolName": "calculator", "arguments": {"expression": "6 * 7"}}
    )
    assert reply["success"], reply
    assert reply["data"]["toolName"] == "calculator"
    assert reply["data"]["success"] is True
    assert reply["data"]["result"] == {"expression": "6 * 7", "result": 42}
    assert reply["data"]["executionTime"] >= 0
    failed = await agent.call("tool:call", {"toolName": "rate_limited_api", "arguments": {}})
    assert failed["success"] is True and failed["data"]["success"] is False
    assert "rate limit" in failed["data"]["error"]
    unknown = await agent.call("tool:call", {"toolName": "no_such_tool"})
    assert unknown["success"] is False and unknown["error"]["code"] == "NOT_FOUND"


async def test_external_agent_example_answers_through_the_gateway(
    stack: Stack, connect: Connect, tmp_path: Path
) -> None:
    """examples/external_agent.py: an agent process on the gateway posts its own messages."""
    client = await connect(stack)
    agent = ManagedProcess(
        "external-agent",
        [
            sys.executable,
            str(EXAMPLES / "external_agent.py"),
            "--agent-id",
            "agent-ext",
            "--dev-token",
            "--ws",
            stack.ws_url(0),
            "--http",
            stack.gateway_url(0),
        ],
        tmp_path / "external-agent.log",
    )
    agent.start()
    try:
        # An agentId must be served (issue 13): the external agent is once it is connected.
        for _ in range(200):
            listed = await client.http_get("/v1/agents")
            if any(a["id"] == "agent-ext" for a in listed["items"]):
                break
            await asyncio.sleep(0.1)
        conv = await client.conversation("agent-ext")
        user = await client.send(conv, "count these five words please")
        final = await client.answer(user, seconds=60)
    finally:
        agent.stop()
    assert final["content"] == "(external agent agent-ext) Your message has 5 words."
    msgs = client.turn_messages(user)
    assert kinds(msgs) == [
        ("assistant", "thinking"),
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]
    assert all(m["agentId"] == "agent-ext" for m in msgs)
    assert msgs[2]["toolResults"][0]["result"] == {"words": 5}


async def test_agent_switch_then_the_new_agent_answers(
    stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    """Case 19: after conversation:update {agentId}, the next message gets the new agent."""
    openai_stub.script("switched-e2e", Step(content=["The code expert here."]))
    client = await connect(stack)
    conv = await client.conversation("agent-demo")
    first = await client.send(conv, "hello demo")
    assert (await client.answer(first))["agentId"] == "agent-demo"
    reply = await client.call("conversation:update", {"conversationId": conv, "agentId": LLM_AGENT})
    assert reply["success"], reply
    system = await client.wait_for(
        lambda f: f.get("event") == "message:new" and f["data"].get("role") == "system"
    )
    assert system["data"]["metadata"] == {"previousAgentId": "agent-demo", "newAgentId": LLM_AGENT}
    second = await client.send(conv, "switched-e2e: who are you?")
    final = await client.answer(second)
    assert final["agentId"] == LLM_AGENT
    assert final["content"] == "The code expert here."
    # The new agent's model saw the earlier exchange but not the system message.
    sent = [r for r in openai_stub.requests if "switched-e2e" in json.dumps(r["messages"])][-1]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
