"""Test doubles of the turn loop (parley_agent_bridge.turn): a model backend that answers
from a script, the conversation service in memory (stores messages, dedup by
clientMessageId, records the events published), tools with set outcomes. No network."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

from parley_agent_bridge.backends import ChatMessage, ModelEvent, ToolSpec
from parley_agent_bridge.tools import ToolOutcome
from parley_contract.events import Event

_ids = itertools.count(1)


class MemoryIO:
    """Stores messages like the conversation service would (dedup by clientMessageId)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.events: list[tuple[Event, dict[str, Any]]] = []
        self.timeline: list[str] = []

    async def send_message(self, data: dict[str, Any]) -> dict[str, Any]:
        for m in self.messages:
            if m.get("clientMessageId") == data.get("clientMessageId"):
                return m
        msg = {"_id": f"msg-{next(_ids)}", "seq": len(self.messages) + 2, **data}
        self.messages.append(msg)
        self.timeline.append(f"message:{data['messageType']}")
        return msg

    async def publish(self, event: Event, data: dict[str, Any]) -> None:
        self.events.append((event, data))
        self.timeline.append(event.value)


class FakeTools:
    def __init__(self, outcomes: dict[str, ToolOutcome], gate: asyncio.Event | None = None) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.gate = gate
        self.called = asyncio.Event()

    def specs(self) -> list[ToolSpec]:
        return [
            {"type": "function", "function": {"name": n, "description": "", "parameters": {}}}
            for n in self.outcomes
        ]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        self.calls.append((name, arguments))
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.outcomes[name]


class Scripted:
    """A backend answering from a list of scripted responses, one per model call."""

    def __init__(self, *responses: list[ModelEvent] | Exception) -> None:
        self.responses = list(responses)
        self.seen: list[list[ChatMessage]] = []

    async def stream(
        self, messages: list[ChatMessage], tools: list[ToolSpec]
    ) -> AsyncIterator[ModelEvent]:
        self.seen.append([dict(m) for m in messages])
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        for event in response:
            await asyncio.sleep(0)
            yield event
