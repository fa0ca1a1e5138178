"""How stored messages become the model's chat history, and tool results storable
(parley_agent_bridge.transcript)."""

from __future__ import annotations

import json
from typing import Any

from parley_agent_bridge.transcript import chat_history

USER = {"_id": "msg-user", "seq": 1, "role": "user", "messageType": "text", "content": "hello"}


def test_chat_history_merges_tool_calls_and_skips_thinking() -> None:
    stored: list[dict[str, Any]] = [
        USER,
        {
            "role": "assistant",
            "messageType": "thinking",
            "content": "",
            "thinking": {"content": "x"},
        },
        {
            "role": "assistant",
            "messageType": "tool_call",
            "content": "a",
            "toolCalls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}],
        },
        {
            "role": "assistant",
            "messageType": "tool_call",
            "content": "b",
            "toolCalls": [{"id": "2", "function": {"name": "g", "arguments": "{}"}}],
        },
        {
            "role": "tool",
            "messageType": "tool_result",
            "toolResults": [{"toolCallId": "1", "success": True, "result": 1}],
        },
        {"role": "assistant", "messageType": "text", "content": "done"},
    ]
    out = chat_history("sys", stored)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert [c["id"] for c in out[2]["tool_calls"]] == ["1", "2"]
    assert json.loads(out[4]["content"])["success"] is False  # the missing result of call 2


def test_tool_results_are_made_storable() -> None:
    from parley_agent_bridge.transcript import MAX_RESULT_CHARS, storable_result

    assert storable_result({"a": [1, {"b": 2}]}) == {"a": [1, {"b": 2}]}
    assert storable_result({"$where": 1}) == '{"$where": 1}'
    assert storable_result({"a.b": 1}) == '{"a.b": 1}'
    big = storable_result({"x": "y" * 100_000})
    assert isinstance(big, str) and len(big) == MAX_RESULT_CHARS and big.endswith("[truncated]")
    deep: object = 1
    for _ in range(12):
        deep = [deep]
    assert isinstance(storable_result(deep), str)
    # Numbers the store cannot hold (an external MCP server may return them).
    assert storable_result({"n": 2**63}) == '{"n": 9223372036854775808}'
    assert storable_result({"n": float("nan")}) == '{"n": NaN}'
    assert storable_result({"n": 2**63 - 1}) == {"n": 2**63 - 1}
