"""What an agent turn writes and publishes (turn.py runs it): its messages through the
conversation service, with deterministic ``clientMessageId``s, and its ephemeral events; the
final ``text`` (or ``error``, or the partial text of a stopped turn) with usage and cost."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from parley_agent_bridge.backends import (
    ChatMessage,
    Finish,
    ModelToolCall,
    TokenUsage,
    estimate_tokens,
)
from parley_agent_bridge.config import AgentConfig
from parley_agent_bridge.tools import ToolOutcome
from parley_agent_bridge.transcript import clip, storable_result
from parley_contract.events import Event
from parley_contract.models import MessageType, Role

logger = logging.getLogger(__name__)

STOPPED = "(stopped)"
EMPTY = "(the model returned no text)"  # the store refuses empty content


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
class Step:
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


class TurnWriter:
    """The writes of one turn; :class:`parley_agent_bridge.turn.Turn` is one."""

    def __init__(
        self,
        *,
        agent: AgentConfig,
        io: TurnIO,
        request: TurnRequest,
        timeout: float = 300.0,
        write_retries: int = 3,
    ) -> None:
        self.agent = agent
        self.io = io
        self.request = request
        self.timeout = timeout
        self.write_retries = write_retries
        self.stop_reason: str | None = None
        self.started = time.monotonic()
        self.usage = TokenUsage()

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

    async def _flush_thinking(self, step: Step) -> None:
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
                    "content": clip("".join(step.reasoning)),
                    "visible": self.agent.thinking_visible,
                    "duration": duration,
                },
            }
        )

    async def _end_stream(self, step: Step, finish_reason: str, message_id: Any) -> None:
        if step.stream_id is None:
            return
        data: dict[str, Any] = {"streamId": step.stream_id, "finishReason": finish_reason}
        if isinstance(message_id, str):
            data["messageId"] = message_id
        await self._publish(Event.MESSAGE_STREAM_END, data)

    async def _write_tool_calls(self, step: Step) -> list[dict[str, Any]]:
        written: list[dict[str, Any]] = []
        for i, call in enumerate(step.calls):
            content = clip(step.content) if i == 0 and step.content else f"Calling {call.name}..."
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

    async def _write_tool_results(self, step: Step, outcomes: dict[str, ToolOutcome]) -> None:
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
            result["error"] = clip(out.error)
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

    def _cost(self) -> float:
        return self.agent.cost(self.usage.prompt_tokens, self.usage.completion_tokens)

    def _usage_json(self) -> dict[str, int]:
        return {
            "promptTokens": self.usage.prompt_tokens,
            "completionTokens": self.usage.completion_tokens,
            "totalTokens": self.usage.total_tokens,
        }

    async def _finish_answer(self, step: Step) -> TurnResult:
        assert step.finish is not None
        reason = step.finish.finish_reason or "stop"
        content = clip(step.content) if step.content.strip() else f"{EMPTY} ({reason})"
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

    async def _finish_stopped(self, step: Step, messages: list[ChatMessage]) -> TurnResult:
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
                "content": clip(step.content) if step.content.strip() else STOPPED,
                "usage": self._usage_json(),
                "latency": self._latency_ms(),
                "cost": self._cost(),
                "finishReason": "aborted",
            }
        )
        await self._end_stream(step, "aborted", msg.get("_id"))
        return TurnResult("aborted", msg, self.usage, self._cost(), step.index + 1)

    async def _finish_error(self, step: Step, error: str) -> TurnResult:
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
            "content": clip("Sorry, I could not answer: " + error),
            "error": clip(error),
            "finishReason": "error",
            "latency": self._latency_ms(),
        }
        if self.usage.total_tokens:
            data["usage"] = self._usage_json()
            data["cost"] = self._cost()
        msg = await self._write(data)
        await self._end_stream(step, "error", msg.get("_id"))
        return TurnResult("error", msg, self.usage, self._cost(), step.index + 1)
