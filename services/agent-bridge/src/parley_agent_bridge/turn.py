"""One agent turn: answer one user message (domain logic, no network of its own).

Injected: the model backend, the tool runner and :class:`TurnIO` (durable writes through
the conversation service, ephemeral events on the conversation subject). The order of
what members see:

1. ``agent:thinking``
2. per model step: ``message:stream-start`` / ``-delta``... / ``-end`` for the text the model
   streams; a persisted ``thinking`` message when the model reasoned;
3. per tool call: a persisted ``tool_call`` message, ``agent:tool-calling``, the MCP call, a
   persisted ``tool_result`` (calls of one step run in parallel);
4. the final ``text`` message with usage, latency and cost (or ``error``; or the partial
   text with ``finishReason: aborted`` after ``message:stop``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from parley_agent_bridge.backends import (
    BackendError,
    ChatMessage,
    Finish,
    ModelBackend,
    ModelToolCall,
    ReasoningDelta,
    TextDelta,
    TokenUsage,
    ToolCalls,
    estimate_tokens,
)
from parley_agent_bridge.config import AgentConfig
from parley_agent_bridge.tools import ToolOutcome, ToolRunner, parse_arguments
from parley_contract.commands import MAX_CONTENT_CHARS
from parley_contract.events import Event
from parley_contract.limits import is_storable_free_form
from parley_contract.models import MessageType, Role

logger = logging.getLogger(__name__)

T = TypeVar("T")

STOPPED = "(stopped)"
EMPTY = "(the model returned no text)"  # the store refuses empty content
MAX_RESULT_CHARS = 32_000  # a stored tool result; larger ones are kept as truncated JSON text
INTERRUPTED = "interrupted: the bridge replica running this turn stopped before the result"


class WriteError(Exception):
    """The conversation service refused or did not answer a write."""


class TurnIO(Protocol):
    async def send_message(self, data: dict[str, Any]) -> dict[str, Any]:
        """Store a message (message:send as the agent); the stored message, or WriteError."""
        ...

    async def publish(self, event: Event, data: dict[str, Any]) -> None:
        """Publish an ephemeral event to the conversation's members."""
        ...


@dataclass(frozen=True, slots=True)
class TurnRequest:
    conversation_id: str
    message_id: str  # the user message answered
    seq: int
    attempt: int = 1  # JetStream delivery count


@dataclass
class TurnResult:
    outcome: str  # 'answered' | 'aborted' | 'error' | 'already-answered'
    message: dict[str, Any] | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost: float = 0.0
    steps: int = 0


@dataclass
class _Step:
    index: int
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    reasoning_started: float | None = None
    reasoning_ended: float | None = None
    thinking_written: bool = False
    calls: list[ModelToolCall] = field(default_factory=list)
    finish: Finish | None = None
    stream_id: str | None = None
    deltas: int = 0

    @property
    def content(self) -> str:
        return "".join(self.text)


def client_message_id(turn: TurnRequest, step: int, kind: str) -> str:
    """Deterministic per (turn, step, kind), whatever the delivery attempt: a retried write is
    deduplicated, and a step of a dead attempt is not stored again by the next (issue 11;
    the next attempt goes on from the steps stored, ``first_step``)."""
    raw = f"turn-{turn.message_id}-s{step}-{kind}"
    if len(raw) <= 128:
        return raw
    return "turn-" + hashlib.sha256(raw.encode()).hexdigest()


def stream_id(turn: TurnRequest, attempt: int, step: int) -> str:
    """The ``streamId`` of a step's text stream: known to the attempt that takes over, which
    ends the streams a dead attempt may have left open (``finishReason: interrupted``)."""
    digest = hashlib.sha256(turn.message_id.encode()).hexdigest()[:20]
    return f"stream-{digest}-a{attempt}-s{step}"


def first_step(own: list[dict[str, Any]]) -> int:
    """The step a retried turn goes on with: after the last step whose tool calls or results
    the earlier attempts stored (``metadata.turnStep``), 0 if none."""
    done = -1
    for m in own:
        if m.get("messageType") not in (MessageType.TOOL_CALL, MessageType.TOOL_RESULT):
            continue
        step = (m.get("metadata") or {}).get("turnStep")
        if isinstance(step, int) and not isinstance(step, bool):
            done = max(done, step)
    return done + 1


def _clip(text: str, limit: int = MAX_CONTENT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 12] + " [truncated]"


def storable_result(value: Any) -> Any:
    """A tool result as the store accepts it: big, deep, odd-keyed results or numbers the
    store cannot hold (integers beyond 64 bits, NaN) become JSON text."""
    text = json.dumps(value, default=str)
    if len(text) > MAX_RESULT_CHARS:
        return _clip(text, MAX_RESULT_CHARS)
    if not is_storable_free_form(value):  # the contract's limits (parley_contract.limits)
        return text
    return value


def _tool_content(ok: bool, result: Any, error: str | None) -> str:
    """A tool result as the model reads it (bounded)."""
    return _clip(
        json.dumps({"success": ok, "result": result, "error": error}, default=str), 100_000
    )


def chat_history(system_prompt: str, stored: list[dict[str, Any]]) -> list[ChatMessage]:
    """Stored Parley messages (wire JSON, seq order) as OpenAI chat messages.

    Thinking, error and system messages are left out; consecutive ``tool_call`` messages
    become one assistant message; a tool call without a stored result gets a synthetic one
    (the API requires an answer for every call id).
    """
    out: list[ChatMessage] = [{"role": "system", "content": system_prompt}]
    pending: list[str] = []

    def close_pending() -> None:
        for call_id in pending:
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": _tool_content(False, None, INTERRUPTED),
                }
            )
        pending.clear()

    for msg in stored:
        if msg.get("deletedAt"):
            continue
        role = msg.get("role")
        mtype = msg.get("messageType", "text")
        content = str(msg.get("content") or "")
        if role == Role.TOOL and mtype == MessageType.TOOL_RESULT:
            for res in msg.get("toolResults") or []:
                call_id = res.get("toolCallId")
                if call_id in pending:
                    pending.remove(call_id)
                    out.append(
                        {
                            "role": "tool",
                            "tool_call_id": call_id,
                            "content": _tool_content(
                                bool(res.get("success")), res.get("result"), res.get("error")
                            ),
                        }
                    )
            continue
        if role == Role.ASSISTANT and mtype == MessageType.TOOL_CALL:
            calls = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": c["function"].get("arguments") or "{}",
                    },
                }
                for c in msg.get("toolCalls") or []
                if isinstance(c, dict) and "id" in c and "function" in c
            ]
            if not calls:
                continue
            prev = out[-1]
            if prev.get("role") == "assistant" and prev.get("tool_calls") and pending:
                prev["tool_calls"].extend(calls)
                if content and not prev.get("content"):
                    prev["content"] = content
            else:
                close_pending()
                out.append({"role": "assistant", "content": content or None, "tool_calls": calls})
            pending.extend(c["id"] for c in calls)
            continue
        close_pending()
        if mtype != MessageType.TEXT:
            continue
        if role == Role.USER:
            out.append({"role": "user", "content": content})
        elif role == Role.ASSISTANT and content:
            out.append({"role": "assistant", "content": content})
    close_pending()
    return out


class Turn:
    """Runs one turn; :meth:`stop` (message:stop) and the timeout end it early."""

    def __init__(
        self,
        *,
        agent: AgentConfig,
        backend: ModelBackend,
        tools: ToolRunner,
        io: TurnIO,
        request: TurnRequest,
        history: list[dict[str, Any]],
        max_steps: int = 8,
        timeout: float = 300.0,
        write_retries: int = 3,
    ) -> None:
        self.agent = agent
        self.backend = backend
        self.tools = tools
        self.io = io
        self.request = request
        self.history = history
        self.max_steps = max_steps
        self.timeout = timeout
        self.write_retries = write_retries
        self._stop = asyncio.Event()
        self.stop_reason: str | None = None
        self.started = time.monotonic()
        self.usage = TokenUsage()

    # ------------------------------------------------------------------ control

    def stop(self, reason: str = "aborted") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def _race(self, coro: Coroutine[Any, Any, T]) -> tuple[bool, T | None]:
        """Run ``coro`` until it ends or the turn is stopped: (stopped, result)."""
        task = asyncio.ensure_future(coro)
        waiter = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            return True, None
        return False, task.result()

    # ------------------------------------------------------------------ io helpers

    def _base(self, step: int, kind: str) -> dict[str, Any]:
        return {
            "conversationId": self.request.conversation_id,
            "parentMessageId": self.request.message_id,
            "clientMessageId": client_message_id(self.request, step, kind),
            "metadata": {"turnStep": step},
        }

    async def _write(self, data: dict[str, Any]) -> dict[str, Any]:
        delay = 0.2
        for attempt in range(self.write_retries):
            try:
                return await self.io.send_message(data)
            except WriteError as exc:
                if attempt == self.write_retries - 1:
                    raise
                logger.warning("write failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _publish(self, event: Event, data: dict[str, Any]) -> None:
        await self.io.publish(event, data)

    def _latency_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)

    # ------------------------------------------------------------------ the turn

    async def run(self) -> TurnResult:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.timeout, self.stop, "timeout")
        try:
            return await self._run()
        finally:
            timer.cancel()

    async def _run(self) -> TurnResult:
        req = self.request
        own = [m for m in self.history if m.get("parentMessageId") == req.message_id]
        start = first_step(own)
        await self._publish(
            Event.AGENT_THINKING,
            {
                "conversationId": req.conversation_id,
                "agentId": self.agent.id,
                "agentName": self.agent.name,
                "parentMessageId": req.message_id,
                # a redelivered turn: the replica that ran it died, this one goes on
                "status": "recovering" if req.attempt > 1 else "thinking",
            },
        )
        await self._end_dead_streams(start)
        await self._close_interrupted_calls(own, start)
        messages = chat_history(self.agent.system_prompt, self.history)
        for step_index in range(start, start + self.max_steps):
            step = _Step(step_index)
            tools = self.tools.specs()
            stopped, error = await self._race(self._model_step(step, messages, tools))
            if stopped:
                return await self._finish_stopped(step, messages)
            if error is not None:
                return await self._finish_error(step, error)
            assert step.finish is not None
            step_usage = step.finish.usage or TokenUsage(
                sum(estimate_tokens(str(m.get("content") or "")) for m in messages),
                estimate_tokens(step.content) + estimate_tokens("".join(step.reasoning)),
            )
            self.usage = self.usage + step_usage
            await self._flush_thinking(step)
            if not step.calls:
                return await self._finish_answer(step)
            tool_call_msgs = await self._write_tool_calls(step)
            if step.stream_id is not None:
                await self._end_stream(step, "tool_calls", tool_call_msgs[0].get("_id"))
            messages.append(
                {
                    "role": "assistant",
                    "content": step.content or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in step.calls
                    ],
                }
            )
            outcomes: dict[str, ToolOutcome] = {}
            stopped, _ = await self._race(self._run_tools(step, outcomes))
            await self._write_tool_results(step, outcomes)
            for call in step.calls:
                out = outcomes[call.id]
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": call.id,
                        "content": _tool_content(out.success, out.result, out.error),
                    }
                )
            if stopped:
                return await self._finish_stopped(_Step(step_index + 1), messages)
        return await self._finish_error(
            _Step(start + self.max_steps),
            f"the agent did not answer within {self.max_steps} model steps",
        )

    async def _model_step(
        self, step: _Step, messages: list[ChatMessage], tools: list[dict[str, Any]]
    ) -> str | None:
        """Stream one model response; the error text if the backend failed."""
        try:
            async for event in self.backend.stream(messages, tools):
                if isinstance(event, ReasoningDelta):
                    if step.reasoning_started is None:
                        step.reasoning_started = time.monotonic()
                    step.reasoning.append(event.text)
                    step.reasoning_ended = time.monotonic()
                elif isinstance(event, TextDelta):
                    await self._flush_thinking(step)
                    if step.stream_id is None:
                        step.stream_id = stream_id(self.request, self.request.attempt, step.index)
                        await self._publish(
                            Event.MESSAGE_STREAM_START,
                            {
                                "streamId": step.stream_id,
                                "conversationId": self.request.conversation_id,
                                "agentId": self.agent.id,
                                "parentMessageId": self.request.message_id,
                            },
                        )
                    step.text.append(event.text)
                    await self._publish(
                        Event.MESSAGE_STREAM_DELTA,
                        {"streamId": step.stream_id, "delta": event.text, "index": step.deltas},
                    )
                    step.deltas += 1
                elif isinstance(event, ToolCalls):
                    step.calls.extend(event.calls)
                elif isinstance(event, Finish):
                    step.finish = event
        except BackendError as exc:
            return str(exc)
        if step.finish is None:
            step.finish = Finish("tool_calls" if step.calls else "stop")
        return None

    async def _flush_thinking(self, step: _Step) -> None:
        if step.thinking_written or not step.reasoning:
            return
        step.thinking_written = True
        duration = 0.0
        if step.reasoning_started is not None and step.reasoning_ended is not None:
            duration = round((step.reasoning_ended - step.reasoning_started) * 1000, 1)
        await self._write(
            {
                **self._base(step.index, "thinking"),
                "role": Role.ASSISTANT.value,
                "messageType": MessageType.THINKING.value,
                "content": "",
                "thinking": {
                    "content": _clip("".join(step.reasoning)),
                    "visible": self.agent.thinking_visible,
                    "duration": duration,
                },
            }
        )

    async def _end_stream(self, step: _Step, finish_reason: str, message_id: Any) -> None:
        if step.stream_id is None:
            return
        data: dict[str, Any] = {"streamId": step.stream_id, "finishReason": finish_reason}
        if isinstance(message_id, str):
            data["messageId"] = message_id
        await self._publish(Event.MESSAGE_STREAM_END, data)

    async def _write_tool_calls(self, step: _Step) -> list[dict[str, Any]]:
        written: list[dict[str, Any]] = []
        for i, call in enumerate(step.calls):
            content = _clip(step.content) if i == 0 and step.content else f"Calling {call.name}..."
            written.append(
                await self._write(
                    {
                        **self._base(step.index, f"call{i}"),
                        "role": Role.ASSISTANT.value,
                        "messageType": MessageType.TOOL_CALL.value,
                        "content": content,
                        "toolCalls": [
                            {
                                "id": call.id,
                                "type": "mcp_tool",
                                "function": {"name": call.name, "arguments": call.arguments},
                            }
                        ],
                    }
                )
            )
        return written

    async def _run_tools(self, step: _Step, outcomes: dict[str, ToolOutcome]) -> None:
        async def one(call: ModelToolCall) -> None:
            await self._publish(
                Event.AGENT_TOOL_CALLING,
                {
                    "conversationId": self.request.conversation_id,
                    "agentId": self.agent.id,
                    "toolCallId": call.id,
                    "toolName": call.name,
                    "arguments": call.arguments,
                    "parentMessageId": self.request.message_id,
                },
            )
            args, error = parse_arguments(call.arguments)
            if args is None:
                outcomes[call.id] = ToolOutcome(None, False, error, 0.0)
                return
            outcomes[call.id] = await self.tools.call(call.name, args)

        await asyncio.gather(*(one(c) for c in step.calls))

    async def _write_tool_results(self, step: _Step, outcomes: dict[str, ToolOutcome]) -> None:
        for i, call in enumerate(step.calls):
            out = outcomes.get(call.id)
            if out is None:
                out = ToolOutcome(None, False, "aborted: the turn was stopped", 0.0)
                outcomes[call.id] = out
            await self._write_result(step.index, i, call.id, call.name, out)

    async def _write_result(
        self, step: int, i: int | str, call_id: str, name: str, out: ToolOutcome
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "toolCallId": call_id,
            "toolName": name,
            "result": storable_result(out.result),
            "success": out.success,
            "executionTime": out.execution_time_ms,
        }
        if out.error is not None:
            result["error"] = _clip(out.error)
        return await self._write(
            {
                **self._base(step, f"result{i}"),
                "role": Role.TOOL.value,
                "messageType": MessageType.TOOL_RESULT.value,
                "name": name,
                "content": "Tool execution completed" if out.success else "Tool execution failed",
                "toolResults": [result],
            }
        )

    async def _end_dead_streams(self, start: int) -> None:
        """A retried turn: end the text streams the earlier attempts may have left open (their
        last step's, ``start``, or the one before when it died between storing its tool calls
        and ending its stream); a client ignores the end of a stream it never saw."""
        for attempt in range(1, self.request.attempt):
            for step in (start - 1, start):
                if step >= 0:
                    sid = stream_id(self.request, attempt, step)
                    await self._publish(
                        Event.MESSAGE_STREAM_END, {"streamId": sid, "finishReason": "interrupted"}
                    )

    async def _close_interrupted_calls(self, own: list[dict[str, Any]], start: int) -> None:
        """A retried turn: store a failed result for calls of the dead attempt that have none
        (keyed by the call's id: stored once, whichever attempt gets there first)."""
        answered = {
            r.get("toolCallId")
            for m in own
            for r in (m.get("toolResults") or [])
            if isinstance(r, dict)
        }
        for msg in own:
            if msg.get("messageType") != MessageType.TOOL_CALL:
                continue
            for call in msg.get("toolCalls") or []:
                if not isinstance(call, dict) or call.get("id") in answered:
                    continue
                name = str((call.get("function") or {}).get("name") or "tool")
                stored = await self._write_result(
                    start - 1,
                    f"x-{call.get('id')}",
                    str(call.get("id")),
                    name,
                    ToolOutcome(None, False, INTERRUPTED, 0.0),
                )
                self.history.append(stored)

    def _cost(self) -> float:
        return self.agent.cost(self.usage.prompt_tokens, self.usage.completion_tokens)

    def _usage_json(self) -> dict[str, int]:
        return {
            "promptTokens": self.usage.prompt_tokens,
            "completionTokens": self.usage.completion_tokens,
            "totalTokens": self.usage.total_tokens,
        }

    async def _finish_answer(self, step: _Step) -> TurnResult:
        assert step.finish is not None
        reason = step.finish.finish_reason or "stop"
        content = _clip(step.content) if step.content.strip() else f"{EMPTY} ({reason})"
        msg = await self._write(
            {
                **self._base(step.index, "final"),
                "role": Role.ASSISTANT.value,
                "messageType": MessageType.TEXT.value,
                "content": content,
                "usage": self._usage_json(),
                "latency": self._latency_ms(),
                "cost": self._cost(),
                "finishReason": reason,
            }
        )
        await self._end_stream(step, reason, msg.get("_id"))
        return TurnResult("answered", msg, self.usage, self._cost(), step.index + 1)

    async def _finish_stopped(self, step: _Step, messages: list[ChatMessage]) -> TurnResult:
        if self.stop_reason == "timeout":
            return await self._finish_error(step, f"the turn timed out after {self.timeout:g}s")
        # The aborted step reported no usage: estimate it so totals still count it.
        if step.text or step.reasoning:
            self.usage = self.usage + TokenUsage(
                sum(estimate_tokens(str(m.get("content") or "")) for m in messages),
                estimate_tokens(step.content) + estimate_tokens("".join(step.reasoning)),
            )
        await self._flush_thinking(step)
        msg = await self._write(
            {
                **self._base(step.index, "final"),
                "role": Role.ASSISTANT.value,
                "messageType": MessageType.TEXT.value,
                # The store refuses empty content: say that nothing was written yet.
                "content": _clip(step.content) if step.content.strip() else STOPPED,
                "usage": self._usage_json(),
                "latency": self._latency_ms(),
                "cost": self._cost(),
                "finishReason": "aborted",
            }
        )
        await self._end_stream(step, "aborted", msg.get("_id"))
        return TurnResult("aborted", msg, self.usage, self._cost(), step.index + 1)

    async def _finish_error(self, step: _Step, error: str) -> TurnResult:
        logger.warning(
            "turn for %s in %s failed: %s",
            self.request.message_id,
            self.request.conversation_id,
            error,
        )
        data: dict[str, Any] = {
            **self._base(step.index, "error"),
            "role": Role.ASSISTANT.value,
            "messageType": MessageType.ERROR.value,
            "content": _clip("Sorry, I could not answer: " + error),
            "error": _clip(error),
            "finishReason": "error",
            "latency": self._latency_ms(),
        }
        if self.usage.total_tokens:
            data["usage"] = self._usage_json()
            data["cost"] = self._cost()
        msg = await self._write(data)
        await self._end_stream(step, "error", msg.get("_id"))
        return TurnResult("error", msg, self.usage, self._cost(), step.index + 1)
