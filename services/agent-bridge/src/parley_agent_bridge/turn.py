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
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

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
from parley_agent_bridge.files import text_of
from parley_agent_bridge.tools import ToolOutcome, ToolRunner, parse_arguments
from parley_agent_bridge.transcript import INTERRUPTED, chat_history, tool_content
from parley_agent_bridge.turn_writes import (
    Step,
    TurnIO,
    TurnRequest,
    TurnResult,
    TurnWriter,
    WriteError,
    first_step,
    stream_id,
)
from parley_contract.events import Event
from parley_contract.models import MessageType

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["Turn", "TurnIO", "TurnRequest", "TurnResult", "WriteError"]


class Turn(TurnWriter):
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
        attachments: dict[str, list[dict[str, Any]]] | None = None,
        max_steps: int = 8,
        timeout: float = 300.0,
        write_retries: int = 3,
    ) -> None:
        super().__init__(
            agent=agent, io=io, request=request, timeout=timeout, write_retries=write_retries
        )
        self.backend = backend
        self.tools = tools
        self.history = history
        self.attachments = attachments  # message id → content parts (files.py)
        self.max_steps = max_steps
        self._stop = asyncio.Event()

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
        messages = chat_history(self.agent.system_prompt, self.history, self.attachments)
        for step_index in range(start, start + self.max_steps):
            step = Step(step_index)
            tools = self.tools.specs()
            stopped, error = await self._race(self._model_step(step, messages, tools))
            if stopped:
                return await self._finish_stopped(step, messages)
            if error is not None:
                return await self._finish_error(step, error)
            assert step.finish is not None
            step_usage = step.finish.usage or TokenUsage(
                sum(estimate_tokens(text_of(m.get("content"))) for m in messages),
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
                        "content": tool_content(out.success, out.result, out.error),
                    }
                )
            if stopped:
                return await self._finish_stopped(Step(step_index + 1), messages)
        return await self._finish_error(
            Step(start + self.max_steps),
            f"the agent did not answer within {self.max_steps} model steps",
        )

    async def _model_step(
        self, step: Step, messages: list[ChatMessage], tools: list[dict[str, Any]]
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

    async def _run_tools(self, step: Step, outcomes: dict[str, ToolOutcome]) -> None:
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
