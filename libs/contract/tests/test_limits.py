"""The storable-value limits of every command (parley_contract.limits), tried as an attacker."""

from __future__ import annotations

from typing import Any

import pytest

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.limits import INT64_MAX, INT64_MIN, MAX_FREE_FORM_BYTES
from parley_contract.routes import parse_payload

C = "conv-1"


def refused(event: Event, data: dict[str, Any]) -> str:
    with pytest.raises(ParleyError) as info:
        parse_payload(event, data)
    assert info.value.code is ErrorCode.VALIDATION_ERROR
    assert info.value.details is not None
    field: str = info.value.details["field"]
    return field


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"metadata": {"n": INT64_MAX + 1}}, "metadata.n"),
        ({"metadata": {"n": INT64_MIN - 1}}, "metadata.n"),
        ({"metadata": {"n": float("nan")}}, "metadata.n"),
        ({"metadata": {"l": [0, float("-inf")]}}, "metadata.l.1"),
        ({"metadata": {"$set": 1}}, "metadata.$set"),
        ({"metadata": {"a": {"b.c": 1}}}, "metadata.a.b.c"),
        ({"metadata": {"a\x00": 1}}, "metadata.a\x00"),
        ({"metadata": {"big": "x" * MAX_FREE_FORM_BYTES}}, "metadata"),
        ({"latency": float("inf")}, "latency"),
        ({"cost": float("nan")}, "cost"),
        (
            {"usage": {"promptTokens": 2**64, "completionTokens": 0, "totalTokens": 0}},
            "usage.promptTokens",
        ),
        (
            {
                "toolResults": [
                    {"toolCallId": "t", "toolName": "x", "success": True, "result": {"$x": 1}}
                ]
            },
            "toolResults.0.result.$x",
        ),
    ],
)
def test_message_send_refuses_what_the_store_cannot_hold(data: dict[str, Any], field: str) -> None:
    assert refused(Event.MESSAGE_SEND, {"conversationId": C, "content": "x", **data}) == field


def test_nesting_is_bounded_without_recursion() -> None:
    deep: Any = 1
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    field = refused(
        Event.MESSAGE_SEND, {"conversationId": C, "content": "x", "metadata": {"d": deep}}
    )
    assert field.startswith("metadata.d")
    assert refused(Event.TOOL_CALL, {"toolName": "calc", "arguments": {"x": deep}}).startswith(
        "arguments.x"
    )


def test_other_commands_too() -> None:
    assert refused(Event.CONVERSATION_JOIN, {"conversationId": C, "sinceSeq": 2**63}) == "sinceSeq"
    assert refused(Event.TOOL_CALL, {"toolName": "t", "arguments": {"n": 2**70}}) == "arguments.n"


def test_values_that_fit_pass() -> None:
    meta = {"max": INT64_MAX, "min": INT64_MIN, "f": 1e308, "nested": [[[{"ok": True}]]]}
    cmd = parse_payload(Event.MESSAGE_SEND, {"conversationId": C, "content": "x", "metadata": meta})
    assert cmd.model_dump()["metadata"] == meta
