"""End to end through a real gateway, conversation service, agent bridge, NATS and store,
with the scripted OpenAI-compatible server and a real MCP server (the sample flows). The
other agents (demo, external, switched to): test_e2e_agents.py."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from parley_agent_bridge.openai_stub import OpenAIStub, Step
from parley_client.testing import WsClient
from parley_devstack.stack import Stack

LLM_AGENT = "agent-llm"  # configured by conftest.agents_file
PRICE_PROMPT = 1.0
PRICE_COMPLETION = 2.0
Connect = Callable[..., Awaitable[WsClient]]

pytestmark = pytest.mark.timeout(180)


def kinds(msgs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["messageType"]) for m in msgs]


def streamed_text(client: WsClient, conv_id: str, stream_id: str) -> str:
    deltas = [
        f["data"]
        for f in client.events("message:stream-delta", conv_id)
        if f["data"]["streamId"] == stream_id
    ]
    assert [d["index"] for d in deltas] == list(range(len(deltas)))
    return "".join(d["delta"] for d in deltas)


async def test_thinking_then_streamed_text(
    stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    """Cases 7-9: a visible thinking message, then the answer streamed token by token."""
    openai_stub.script(
        "sieve-e2e",
        Step(
            reasoning=["I need ", "a boolean array."],
            content=["Here's ", "an implementation", " of the sieve."],
            usage=(250, 320),
        ),
    )
    client = await connect(stack)
    conv = await client.conversation(LLM_AGENT)
    user = await client.send(conv, "Write the sieve-e2e function")
    final = await client.answer(user)

    msgs = client.turn_messages(user)
    assert kinds(msgs) == [("assistant", "thinking"), ("assistant", "text")]
    thinking = msgs[0]["thinking"]
    assert thinking["content"] == "I need a boolean array."
    assert thinking["visible"] is True and thinking["duration"] >= 0
    assert final["content"] == "Here's an implementation of the sieve."
    assert final["agentId"] == LLM_AGENT
    assert final["usage"] == {"promptTokens": 250, "completionTokens": 320, "totalTokens": 570}
    assert final["latency"] > 0
    assert final["finishReason"] == "stop"

    # agent:thinking first; then the stream, whose deltas concatenate to the final message.
    assert client.events("agent:thinking", conv)[0]["data"]["agentId"] == LLM_AGENT
    start = client.events("message:stream-start", conv)[0]["data"]
    assert start["parentMessageId"] == user["_id"]
    end = await client.wait_for(lambda f: f.get("event") == "message:stream-end")
    assert end["data"] == {
        "streamId": start["streamId"],
        "finishReason": "stop",
        "messageId": final["_id"],
    }
    assert streamed_text(client, conv, start["streamId"]) == final["content"]
    for name in ("agent:thinking", "message:stream-start", "message:stream-delta"):
        assert all("seq" not in f for f in client.events(name, conv))
    # The model saw the system prompt and the user message.
    sent = next(r for r in openai_stub.requests if "sieve-e2e" in json.dumps(r["messages"]))
    assert sent["messages"][0] == {"role": "system", "content": "You are a test agent."}
    assert any(t["function"]["name"] == "web_search" for t in sent["tools"])


async def test_tool_call_flow_totals_and_cost(
    stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    """Cases 3-6: tool_call, tool:calling, MCP web_search, tool_result, final text; totals."""
    openai_stub.script(
        "news-e2e",
        Step(
            content=["I'll search for recent AI news articles."],
            tool_calls=[("call_abc123", "web_search", '{"query": "AI news 2025", "limit": 3}')],
            usage=(400, 45),
        ),
        Step(content=["Here are the top 3 AI news articles: ..."], usage=(890, 145)),
    )
    client = await connect(stack)
    conv = await client.conversation(LLM_AGENT)
    user = await client.send(conv, "Search news-e2e and summarize the top 3 articles")
    final = await client.answer(user)

    msgs = client.turn_messages(user)
    assert kinds(msgs) == [
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]
    call, result, _ = msgs
    assert call["content"] == "I'll search for recent AI news articles."
    assert call["toolCalls"] == [
        {
            "id": "call_abc123",
            "type": "mcp_tool",
            "function": {
                "name": "web_search",
                "arguments": '{"query": "AI news 2025", "limit": 3}',
            },
        }
    ]
    assert result["name"] == "web_search"
    assert result["content"] == "Tool execution completed"
    (tr,) = result["toolResults"]
    assert tr["toolCallId"] == "call_abc123" and tr["toolName"] == "web_search"
    assert tr["success"] is True and tr["executionTime"] >= 0
    assert tr["result"]["articles"][0]["title"] == "OpenAI Releases GPT-5"
    calling = client.events("agent:tool-calling", conv)
    assert [c["data"]["toolName"] for c in calling] == ["web_search"]
    assert calling[0]["data"]["toolCallId"] == "call_abc123"

    # The usage of both model calls, and the cost at the agent's prices.
    assert final["usage"] == {"promptTokens": 1290, "completionTokens": 190, "totalTokens": 1480}
    cost = 1290 / 1000 * PRICE_PROMPT + 190 / 1000 * PRICE_COMPLETION
    assert final["cost"] == pytest.approx(cost)
    assert final["content"] == "Here are the top 3 AI news articles: ..."
    # The tool step's stream ended pointing at the tool_call message.
    ends = [f["data"] for f in client.events("message:stream-end", conv)]
    assert ends[0]["finishReason"] == "tool_calls" and ends[0]["messageId"] == call["_id"]
    # Second model call carried the assistant tool call and the tool result.
    second = [r for r in openai_stub.requests if "news-e2e" in json.dumps(r["messages"])][-1]
    assert second["messages"][-1]["role"] == "tool"
    assert second["messages"][-1]["tool_call_id"] == "call_abc123"

    conversation = await client.http_get(f"/v1/conversations/{conv}")
    assert conversation["totalTokens"] == 1480
    assert conversation["totalCost"] == pytest.approx(cost)
    assert conversation["totalMessages"] == 4
    history = await client.http_get(f"/v1/conversations/{conv}/messages")
    assert kinds(history["items"]) == [
        ("user", "text"),
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]


async def test_multi_tool_chain_and_parallel_calls(
    stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    """Cases 10-15 (two tools one after the other), then two tools in one step."""
    openai_stub.script(
        "chain-e2e",
        Step(
            content=["Fetching sales data..."],
            tool_calls=[("call_db_001", "calculator", '{"expression": "15000 + 18500"}')],
        ),
        Step(
            content=["Analyzing sales trends..."],
            tool_calls=[("call_analyze_001", "web_search", '{"query": "sales trends"}')],
        ),
        Step(content=["## Sales Analysis Summary"]),
    )
    openai_stub.script(
        "parallel-e2e",
        Step(
            tool_calls=[
                ("call_p1", "calculator", '{"expression": "6 * 7"}'),
                ("call_p2", "web_search", '{"query": "parallel"}'),
            ]
        ),
        Step(content=["Both done."]),
    )
    client = await connect(stack)
    conv = await client.conversation(LLM_AGENT)
    user = await client.send(conv, "chain-e2e: fetch, analyze, report")
    final = await client.answer(user)
    assert final["content"] == "## Sales Analysis Summary"
    msgs = client.turn_messages(user)
    assert kinds(msgs) == [
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]
    assert msgs[1]["toolResults"][0]["result"]["result"] == 33500
    assert msgs[3]["toolResults"][0]["toolCallId"] == "call_analyze_001"

    user2 = await client.send(conv, "parallel-e2e please")
    final2 = await client.answer(user2)
    assert final2["content"] == "Both done."
    msgs2 = client.turn_messages(user2)
    assert kinds(msgs2) == [
        ("assistant", "tool_call"),
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]
    results = {m["toolResults"][0]["toolCallId"]: m["toolResults"][0] for m in msgs2[2:4]}
    assert results["call_p1"]["result"]["result"] == 42
    assert results["call_p2"]["success"] is True
    # The model's second call saw both results of the parallel step.
    last = [r for r in openai_stub.requests if "parallel-e2e" in json.dumps(r["messages"])][-1]
    assert [m.get("tool_call_id") for m in last["messages"][-2:]] == ["call_p1", "call_p2"]
    assert len(last["messages"][-3]["tool_calls"]) == 2


async def test_tool_error_and_timeout_answered_gracefully(
    stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    """Cases 16-17: a failing tool and a timed-out tool give failed results, then an answer."""
    openai_stub.script(
        "ratelimit-e2e",
        Step(
            tool_calls=[
                ("call_search_002", "rate_limited_api", '{"query": "x"}'),
                ("call_slow", "sleep", '{"seconds": 30}'),
            ]
        ),
        Step(content=["I apologize, but I encountered a rate limit error."]),
    )
    client = await connect(stack)
    conv = await client.conversation(LLM_AGENT)
    user = await client.send(conv, "ratelimit-e2e search")
    final = await client.answer(user)
    assert final["messageType"] == "text"
    assert final["content"] == "I apologize, but I encountered a rate limit error."
    results = [m for m in client.turn_messages(user) if m["messageType"] == "tool_result"]
    failed = {m["toolResults"][0]["toolCallId"]: m for m in results}
    rate = failed["call_search_002"]
    assert rate["content"] == "Tool execution failed"
    assert rate["toolResults"][0]["success"] is False
    assert "API rate limit exceeded" in rate["toolResults"][0]["error"]
    assert rate["toolResults"][0]["result"] is None
    slow = failed["call_slow"]["toolResults"][0]
    assert slow["success"] is False and "timed out" in slow["error"]
    last = [r for r in openai_stub.requests if "ratelimit-e2e" in json.dumps(r["messages"])][-1]
    fed = json.loads(last["messages"][-2]["content"])
    assert fed["success"] is False and "rate limit" in fed["error"]


async def test_backend_failure_is_an_error_message(
    stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    openai_stub.script("broken-e2e", Step(status=500))
    client = await connect(stack)
    conv = await client.conversation(LLM_AGENT)
    user = await client.send(conv, "broken-e2e")
    final = await client.answer(user)
    assert final["role"] == "assistant"
    assert final["messageType"] == "error"
    assert "HTTP 500" in final["error"]
    assert final["finishReason"] == "error"
    # The agent keeps answering afterwards.
    openai_stub.script("after-e2e", Step(content=["fine again"]))
    user2 = await client.send(conv, "after-e2e")
    assert (await client.answer(user2))["content"] == "fine again"


async def test_stop_keeps_partial_answer(
    stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    openai_stub.script("slowpoke-e2e", Step(content=[f"word{i} " for i in range(200)], delay=0.05))
    client = await connect(stack)
    conv = await client.conversation(LLM_AGENT)
    user = await client.send(conv, "slowpoke-e2e tell me a long story")
    await client.wait_for(
        lambda f: f.get("event") == "message:stream-delta" and f["data"]["index"] >= 3
    )
    reply = await client.call("message:stop", {"conversationId": conv})
    assert reply["success"], reply
    final = await client.answer(user)
    assert final["finishReason"] == "aborted"
    assert final["content"].startswith("word0 word1 word2 word3 ")
    assert len(final["content"].split()) < 200
    end = await client.wait_for(
        lambda f: (
            f.get("event") == "message:stream-end" and f["data"].get("messageId") == final["_id"]
        )
    )
    assert end["data"]["finishReason"] == "aborted"
    assert streamed_text(client, conv, end["data"]["streamId"]) == final["content"]
