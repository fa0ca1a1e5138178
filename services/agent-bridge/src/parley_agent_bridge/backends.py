"""Model backends behind one protocol: ``stream(messages, tools) -> AsyncIterator[ModelEvent]``.

``OpenAIChatBackend`` speaks the OpenAI chat-completions streaming API (OpenAI, vLLM,
Ollama, LiteLLM...): SSE ``data:`` lines, ``delta.content``, ``delta.reasoning_content``
(DeepSeek/vLLM style reasoning), ``delta.tool_calls`` assembled by ``index``, and the final
``usage`` chunk (``stream_options.include_usage``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

logger = logging.getLogger(__name__)

ChatMessage = dict[str, Any]  # an OpenAI chat message
ToolSpec = dict[str, Any]  # an OpenAI tool: {"type": "function", "function": {...}}


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ModelToolCall:
    id: str
    name: str
    arguments: str  # JSON text as produced by the model


@dataclass(frozen=True, slots=True)
class ToolCalls:
    calls: list[ModelToolCall]


@dataclass(frozen=True, slots=True)
class Finish:
    finish_reason: str
    usage: TokenUsage | None = None


ModelEvent = TextDelta | ReasoningDelta | ToolCalls | Finish


class BackendError(Exception):
    """The model backend failed (HTTP error, connection, malformed stream)."""


class ModelBackend(Protocol):
    def stream(
        self, messages: list[ChatMessage], tools: list[ToolSpec]
    ) -> AsyncIterator[ModelEvent]: ...


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIChatBackend:
    """Streams ``POST {base_url}/chat/completions`` with ``stream: true``."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 120.0,
        stream_usage: bool = True,
        extra_body: dict[str, Any] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.stream_usage = stream_usage
        self.extra_body = dict(extra_body or {})
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))
        self._own_client = client is None

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    def _body(self, messages: list[ChatMessage], tools: list[ToolSpec]) -> dict[str, Any]:
        body: dict[str, Any] = {**self.extra_body, "model": self.model, "messages": messages}
        body["stream"] = True
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    async def stream(
        self, messages: list[ChatMessage], tools: list[ToolSpec]
    ) -> AsyncIterator[ModelEvent]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        calls: dict[int, _PartialCall] = {}
        finish_reason: str | None = None
        usage: TokenUsage | None = None
        try:
            async with self._client.stream(
                "POST", self.url, json=self._body(messages, tools), headers=headers
            ) as response:
                if response.status_code >= 400:
                    body = (await response.aread()).decode("utf-8", "replace")[:500]
                    raise BackendError(
                        f"model backend answered HTTP {response.status_code}: {body}"
                    )
                async for payload in _sse_data(response):
                    if payload == "[DONE]":
                        break
                    chunk = _json_object(payload)
                    if chunk.get("error"):
                        raise BackendError(f"model backend error: {_error_text(chunk['error'])}")
                    if isinstance(chunk.get("usage"), dict):
                        usage = _usage(chunk["usage"])
                    for choice in chunk.get("choices") or []:
                        if not isinstance(choice, dict):
                            continue
                        delta = choice.get("delta") or {}
                        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                        if isinstance(reasoning, str) and reasoning:
                            yield ReasoningDelta(reasoning)
                        content = delta.get("content")
                        if isinstance(content, str) and content:
                            yield TextDelta(content)
                        for tc in delta.get("tool_calls") or []:
                            _merge_tool_call(calls, tc)
                        if choice.get("finish_reason"):
                            finish_reason = str(choice["finish_reason"])
        except httpx.HTTPError as exc:
            raise BackendError(f"model backend unreachable: {type(exc).__name__}: {exc}") from exc
        if calls:
            yield ToolCalls(
                [
                    ModelToolCall(c.id or f"call_{i}", c.name, "".join(c.arguments) or "{}")
                    for i, c in sorted(calls.items())
                ]
            )
        if finish_reason is None:
            finish_reason = "tool_calls" if calls else "stop"
        yield Finish(finish_reason, usage)


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined with newlines)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _json_object(payload: str) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise BackendError(f"model backend sent invalid JSON in its stream: {exc}") from None
    if not isinstance(value, dict):
        raise BackendError("model backend sent a stream chunk that is not an object")
    return value


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _usage(raw: dict[str, Any]) -> TokenUsage:
    def num(key: str) -> int:
        value = raw.get(key)
        return int(value) if isinstance(value, int | float) else 0

    return TokenUsage(num("prompt_tokens"), num("completion_tokens"))


def _merge_tool_call(calls: dict[int, _PartialCall], tc: Any) -> None:
    if not isinstance(tc, dict):
        return
    index = tc.get("index")
    if not isinstance(index, int):
        index = len(calls)
    part = calls.setdefault(index, _PartialCall())
    if tc.get("id"):
        part.id = str(tc["id"])
    fn = tc.get("function") or {}
    if isinstance(fn, dict):
        if fn.get("name"):
            part.name += str(fn["name"])
        if isinstance(fn.get("arguments"), str):
            part.arguments.append(fn["arguments"])


def estimate_tokens(text: str) -> int:
    """A rough token count (~4 characters a token) for backends that report no usage."""
    return max(1, (len(text) + 3) // 4) if text else 0
