"""Unit tests of the turn loop: scripted backends, in-memory writer, fake tools
(parley_agent_bridge.testing; no network)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from parley_agent_bridge.backends import (
    BackendError,
    ChatMessage,
    Finish,
    ModelEvent,
    ModelToolCall,
    ReasoningDelta,
    TextDelta,
    TokenUsage,
    ToolCalls,
    ToolSpec,
)
from parley_agent_bridge.config import AgentConfig
from parley_agent_bridge.demo import ScriptedDemoBackend
from parley_agent_bridge.testing import FakeTools, MemoryIO, Scripted
from parley_agent_bridge.tools import ToolOutcome
from parley_agent_bridge.turn import Turn, TurnRequest
from parley_contract.events import Event

AGENT = AgentConfig(
    id="agent-t",
    name="Test Agent",
    model="m",
    price_per_1k_prompt=0.01,
    price_per_1k_completion=0.03,
)


USER = {"_id": "msg-user", "seq": 1, "role": "user", "messageType": "text", "content": "hello"}


def make_turn(backend: Any, tools: Any, io: MemoryIO, **kw: Any) -> Turn:
    return Turn(
        agent=AGENT,
        backend=backend,
        tools=tools,
        io=io,
        request=TurnRequest("conv-1", "msg-user", 1),
        history=[dict(USER)],
        **kw,
    )


async def test_text_answer_streams_and_persists_with_usage_and_cost() -> None:
    io = MemoryIO()
    backend = Scripted(
        [
            ReasoningDelta("Let me "),
            ReasoningDelta("think."),
            TextDelta("Hello "),
            TextDelta("there!"),
            Finish("stop", TokenUsage(1000, 500)),
        ]
    )
    result = await make_turn(backend, FakeTools({}), io).run()
    assert result.outcome == "answered"
    assert io.timeline == [
        "agent:thinking",
        "message:thinking",
        "message:stream-start",
        "message:stream-delta",
        "message:stream-delta",
        "message:text",
        "message:stream-end",
    ]
    thinking, final = io.messages
    assert thinking["role"] == "assistant"
    assert thinking["thinking"]["content"] == "Let me think."
    assert thinking["thinking"]["visible"] is True
    assert final["content"] == "Hello there!"
    deltas = [d["delta"] for e, d in io.events if e is Event.MESSAGE_STREAM_DELTA]
    assert "".join(deltas) == final["content"]
    assert [d["index"] for e, d in io.events if e is Event.MESSAGE_STREAM_DELTA] == [0, 1]
    assert final["usage"] == {"promptTokens": 1000, "completionTokens": 500, "totalTokens": 1500}
    assert final["cost"] == 0.01 + 0.015
    assert final["finishReason"] == "stop"
    assert final["parentMessageId"] == "msg-user"
    end = io.events[-1][1]
    assert end["messageId"] == final["_id"] and end["finishReason"] == "stop"


async def test_parallel_tool_calls_then_answer() -> None:
    io = MemoryIO()
    backend = Scripted(
        [
            TextDelta("Searching."),
            ToolCalls(
                [
                    ModelToolCall("call_a", "web_search", '{"query": "ai"}'),
                    ModelToolCall("call_b", "calculator", '{"expression": "1+1"}'),
                ]
            ),
            Finish("tool_calls", TokenUsage(100, 10)),
        ],
        [TextDelta("Done."), Finish("stop", TokenUsage(200, 20))],
    )
    tools = FakeTools(
        {
            "web_search": ToolOutcome({"articles": []}, True, None, 12.0),
            "calculator": ToolOutcome({"result": 2}, True, None, 3.0),
        }
    )
    result = await make_turn(backend, tools, io).run()
    assert result.outcome == "answered"
    types = [(m["role"], m["messageType"]) for m in io.messages]
    assert types == [
        ("assistant", "tool_call"),
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ]
    assert io.messages[0]["content"] == "Searching."
    assert io.messages[2]["toolResults"][0]["toolCallId"] == "call_a"
    assert io.messages[2]["name"] == "web_search"
    assert io.messages[3]["toolResults"][0]["result"] == {"result": 2}
    assert sorted(n for n, _ in tools.calls) == ["calculator", "web_search"]
    calling = [d["toolName"] for e, d in io.events if e is Event.AGENT_TOOL_CALLING]
    assert sorted(calling) == ["calculator", "web_search"]
    # The second model call saw the assistant tool calls and both results.
    second = backend.seen[1]
    assert second[-3]["tool_calls"][1]["id"] == "call_b"
    assert [m["tool_call_id"] for m in second[-2:]] == ["call_a", "call_b"]
    final = io.messages[-1]
    assert final["usage"]["totalTokens"] == 330
    # Each stream ends: the tool step's stream points at the tool_call message.
    ends = [d for e, d in io.events if e is Event.MESSAGE_STREAM_END]
    assert ends[0]["finishReason"] == "tool_calls"
    assert ends[0]["messageId"] == io.messages[0]["_id"]


async def test_failed_tool_gives_failed_result_and_graceful_answer() -> None:
    io = MemoryIO()
    backend = Scripted(
        [ToolCalls([ModelToolCall("call_x", "web_search", "{}")]), Finish("tool_calls")],
        [TextDelta("Sorry, the search failed."), Finish("stop")],
    )
    tools = FakeTools({"web_search": ToolOutcome(None, False, "API rate limit exceeded", 150.0)})
    result = await make_turn(backend, tools, io).run()
    assert result.outcome == "answered"
    res = io.messages[1]
    assert res["content"] == "Tool execution failed"
    assert res["toolResults"][0]["success"] is False
    assert res["toolResults"][0]["error"] == "API rate limit exceeded"
    fed = json.loads(backend.seen[1][-1]["content"])
    assert fed == {"success": False, "result": None, "error": "API rate limit exceeded"}


async def test_bad_tool_arguments_fail_the_call_not_the_turn() -> None:
    io = MemoryIO()
    backend = Scripted(
        [ToolCalls([ModelToolCall("call_x", "web_search", "{not json")]), Finish("tool_calls")],
        [TextDelta("ok"), Finish("stop")],
    )
    tools = FakeTools({"web_search": ToolOutcome(None, True, None, 1.0)})
    await make_turn(backend, tools, io).run()
    assert tools.calls == []
    assert "not valid JSON" in io.messages[1]["toolResults"][0]["error"]


async def test_backend_error_writes_error_message() -> None:
    io = MemoryIO()
    result = await make_turn(Scripted(BackendError("HTTP 500: boom")), FakeTools({}), io).run()
    assert result.outcome == "error"
    (msg,) = io.messages
    assert msg["messageType"] == "error"
    assert msg["role"] == "assistant"
    assert msg["error"] == "HTTP 500: boom"
    assert msg["finishReason"] == "error"


async def test_stop_keeps_partial_text_with_aborted() -> None:
    io = MemoryIO()
    gate = asyncio.Event()

    class Slow:
        async def stream(
            self, messages: list[ChatMessage], tools: list[ToolSpec]
        ) -> AsyncIterator[ModelEvent]:
            yield TextDelta("Partial ")
            yield TextDelta("answer")
            gate.set()
            await asyncio.Event().wait()  # never finishes on its own
            yield Finish("stop")

    turn = make_turn(Slow(), FakeTools({}), io)
    task = asyncio.create_task(turn.run())
    await gate.wait()
    turn.stop()
    result = await task
    assert result.outcome == "aborted"
    (msg,) = io.messages
    assert msg["content"] == "Partial answer"
    assert msg["finishReason"] == "aborted"
    end = io.events[-1]
    assert end[0] is Event.MESSAGE_STREAM_END and end[1]["finishReason"] == "aborted"


async def test_stop_during_tool_call_records_aborted_results() -> None:
    io = MemoryIO()
    backend = Scripted([ToolCalls([ModelToolCall("c1", "sleep", "{}")]), Finish("tool_calls")])
    tools = FakeTools({"sleep": ToolOutcome(1, True, None, 1.0)}, gate=asyncio.Event())
    turn = make_turn(backend, tools, io)
    task = asyncio.create_task(turn.run())
    await tools.called.wait()
    turn.stop()
    result = await task
    assert result.outcome == "aborted"
    assert [m["messageType"] for m in io.messages] == ["tool_call", "tool_result", "text"]
    assert io.messages[1]["toolResults"][0]["success"] is False
    assert io.messages[2]["finishReason"] == "aborted"
    assert io.messages[2]["content"] == "(stopped)"


async def test_retry_after_replica_death_closes_interrupted_calls_and_finishes() -> None:
    io = MemoryIO()
    call = {
        "_id": "msg-old",
        "role": "assistant",
        "messageType": "tool_call",
        "content": "x",
        "parentMessageId": "msg-user",
        "toolCalls": [
            {"id": "c1", "type": "mcp_tool", "function": {"name": "web_search", "arguments": "{}"}}
        ],
    }
    backend = Scripted([TextDelta("Recovered."), Finish("stop")])
    turn = Turn(
        agent=AGENT,
        backend=backend,
        tools=FakeTools({}),
        io=io,
        request=TurnRequest("conv-1", "msg-user", 1, attempt=2),
        history=[dict(USER), call],
    )
    result = await turn.run()
    assert result.outcome == "answered"
    assert [m["messageType"] for m in io.messages] == ["tool_result", "text"]
    assert io.messages[0]["toolResults"][0]["toolCallId"] == "c1"
    assert io.messages[0]["toolResults"][0]["success"] is False
    assert io.messages[1]["clientMessageId"] == "turn-msg-user-s0-final"
    assert backend.seen[0][-1]["role"] == "tool"


async def test_a_turn_killed_mid_step_goes_on_with_each_step_stored_once() -> None:
    """Issue 11: attempt 1 dies while streaming step 1; attempt 2 (another replica) ends the
    dead stream (interrupted), says it is recovering, and stores no step twice."""
    io = MemoryIO()  # the conversation service: dedupe by clientMessageId
    call = ModelToolCall("c1", "calc", "{}")
    step0: list[ModelEvent] = [
        ReasoningDelta("plan"),
        TextDelta("Let me check."),
        ToolCalls([call]),
        Finish("x"),
    ]
    gate = asyncio.Event()

    class Dies(Scripted):
        async def stream(
            self, messages: list[ChatMessage], tools: list[ToolSpec]
        ) -> AsyncIterator[ModelEvent]:
            if len(self.seen) == 1:  # step 1: reasons, streams a little, then hangs
                self.seen.append(messages)
                yield ReasoningDelta("again")
                yield TextDelta("The answ")
                gate.set()
                await asyncio.Event().wait()
            async for e in super().stream(messages, tools):
                yield e

    tools = FakeTools({"calc": ToolOutcome(4, True, None, 1.0)})
    first = make_turn(Dies(step0), tools, io)
    task = asyncio.create_task(first.run())
    await gate.wait()
    task.cancel()  # kill -9 of the replica: nothing more from attempt 1
    stored_by_1 = [m["clientMessageId"] for m in io.messages]
    assert [m["messageType"] for m in io.messages] == [
        "thinking",
        "tool_call",
        "tool_result",
        "thinking",
    ]
    dead_stream = next(d["streamId"] for e, d in io.events if e is Event.MESSAGE_STREAM_START)
    io.events.clear()

    again = Scripted([ReasoningDelta("again"), TextDelta("The answer is 4."), Finish("stop")])
    second = Turn(
        agent=AGENT,
        backend=again,
        tools=tools,
        io=io,
        request=TurnRequest("conv-1", "msg-user", 1, attempt=2),
        history=[dict(USER), *(dict(m) for m in io.messages)],
    )
    result = await second.run()
    assert result.outcome == "answered"
    ids = [m["clientMessageId"] for m in io.messages]
    assert len(ids) == len(set(ids)) and ids[: len(stored_by_1)] == stored_by_1
    assert [m["messageType"] for m in io.messages] == [
        "thinking",
        "tool_call",
        "tool_result",
        "thinking",  # step 1's, stored once (by attempt 1)
        "text",
    ]
    assert io.messages[-1]["content"] == "The answer is 4."
    assert tools.calls == [("calc", {})]  # the tool is not run again
    names = [e for e, _ in io.events]
    assert names[0] is Event.AGENT_THINKING and io.events[0][1]["status"] == "recovering"
    ends = [d for e, d in io.events if e is Event.MESSAGE_STREAM_END]
    assert {"streamId": dead_stream, "finishReason": "interrupted"} in ends
    assert names.index(Event.MESSAGE_STREAM_END) < names.index(Event.MESSAGE_STREAM_START)


async def test_write_retry_is_deduplicated_by_client_message_id() -> None:
    io = MemoryIO()
    original = io.send_message
    failures = {"n": 1}

    async def flaky(data: dict[str, Any]) -> dict[str, Any]:
        stored = await original(data)
        if failures["n"]:
            failures["n"] -= 1
            from parley_agent_bridge.turn import WriteError

            raise WriteError("reply lost")
        return stored

    io.send_message = flaky  # type: ignore[method-assign]
    await make_turn(Scripted([TextDelta("hi"), Finish("stop")]), FakeTools({}), io).run()
    assert len(io.messages) == 1


async def test_demo_backend_walks_search_flow() -> None:
    io = MemoryIO()
    tools = FakeTools(
        {"web_search": ToolOutcome({"articles": [{"title": "T", "summary": "S"}]}, True, None, 1.0)}
    )
    turn = Turn(
        agent=AGENT,
        backend=ScriptedDemoBackend(delay=0),
        tools=tools,
        io=io,
        request=TurnRequest("conv-1", "msg-user", 1),
        history=[{**USER, "content": "Search for AI news"}],
    )
    await turn.run()
    assert [m["messageType"] for m in io.messages] == ["tool_call", "tool_result", "text"]
    assert "**T**" in io.messages[-1]["content"]


async def test_long_answer_is_clipped_to_the_content_limit() -> None:
    from parley_contract.limits import MAX_CONTENT_CHARS

    io = MemoryIO()
    backend = Scripted([TextDelta("z" * (MAX_CONTENT_CHARS + 10)), Finish("stop")])
    await make_turn(backend, FakeTools({}), io).run()
    assert len(io.messages[0]["content"]) == MAX_CONTENT_CHARS


async def test_empty_model_answer_is_stored_visibly() -> None:
    io = MemoryIO()
    await make_turn(Scripted([ReasoningDelta("hmm"), Finish("length")]), FakeTools({}), io).run()
    assert [m["messageType"] for m in io.messages] == ["thinking", "text"]
    assert io.messages[1]["content"] == "(the model returned no text) (length)"
    assert io.messages[1]["finishReason"] == "length"


async def test_event_data_match_the_contract_models() -> None:
    from parley_contract import agent_events as ae

    models: dict[Event, type[BaseModel]] = {
        Event.AGENT_THINKING: ae.AgentThinking,
        Event.AGENT_TOOL_CALLING: ae.AgentToolCalling,
        Event.MESSAGE_STREAM_START: ae.StreamStart,
        Event.MESSAGE_STREAM_DELTA: ae.StreamDelta,
        Event.MESSAGE_STREAM_END: ae.StreamEnd,
    }
    io = MemoryIO()
    backend = Scripted(
        [TextDelta("a"), ToolCalls([ModelToolCall("c", "t", "{}")]), Finish("tool_calls")],
        [ReasoningDelta("r"), TextDelta("b"), Finish("stop")],
    )
    await make_turn(backend, FakeTools({"t": ToolOutcome(1, True, None, 1.0)}), io).run()
    assert {e for e, _ in io.events} == set(models)
    for event, data in io.events:
        parsed = models[event].model_validate(data)  # extra fields are refused
        assert parsed.model_dump(by_alias=True, exclude_unset=True) == data
