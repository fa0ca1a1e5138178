"""After a turn: the agent names the conversation and keeps its context (issue 17).

- **Title**: after the first exchange (the first answered turn of a conversation that still has
  its default title: no ``titleSource``, title "New conversation"), the conversation's model
  writes a short title. The conversation service never lets an agent's title replace one a
  user wrote (``titleSource``, docs/security.md), so a user who renames the conversation
  meanwhile keeps their title.
- **Context**: once ``context_every_messages`` messages were added since the context was last
  written (``context.messageCount``), the model writes ``context.summary``, ``entities``,
  ``topics`` and ``sentiment`` (JSON, bounded here before it is sent).

Both go through the agent's own backend (the demo agent answers these prompts
deterministically, :mod:`parley_agent_bridge.demo`) and reach the members as one
``conversation:update`` by the agent, so as a durable ``conversation:updated``. The update
carries the calls' ``usage`` and ``cost``: the conversation's totals count them like any other
model call. Each can be turned off per agent (``auto_title``, ``context_every_messages: 0``).
Best effort: a failed call or write is logged, and the next answered turn tries again.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from parley_agent_bridge.backends import (
    ChatMessage,
    Finish,
    ModelBackend,
    TextDelta,
    TokenUsage,
    estimate_tokens,
)
from parley_agent_bridge.config import AgentConfig
from parley_contract.commands import DEFAULT_TITLE

logger = logging.getLogger(__name__)

TITLE_INSTRUCTIONS = (
    "Write a short title, at most six words, for the conversation below. "
    "Answer with the title only: no quotes, no punctuation at the end."
)
CONTEXT_INSTRUCTIONS = (
    "Describe the conversation below as one JSON object with the keys "
    '"summary" (two sentences at most), "entities" (names of people, places, products), '
    '"topics" (a few words each) and "sentiment" ("positive", "neutral" or "negative"). '
    "Answer with the JSON object only."
)
TITLE_CHARS = 80
SUMMARY_CHARS = 2000
LIST_ITEMS = 20
ITEM_CHARS = 100
SENTIMENT_CHARS = 40
TRANSCRIPT_CHARS = 12_000  # of the conversation sent with these prompts (its latest part)
LINE_CHARS = 2_000  # of one message in it


@dataclass(frozen=True, slots=True)
class Plan:
    """What an answered turn leads to in a conversation (nothing, a title, a context)."""

    title: bool
    context: bool
    message_count: int

    def __bool__(self) -> bool:
        return self.title or self.context


def plan(agent: AgentConfig, conversation: dict[str, Any]) -> Plan:
    """What to write, from the conversation as the service returns it (wire JSON)."""
    untitled = conversation.get("titleSource") is None and (
        conversation.get("title") == DEFAULT_TITLE
    )
    count = _int(conversation.get("totalMessages"))
    context = conversation.get("context")
    since = _int(context.get("messageCount")) if isinstance(context, dict) else 0
    every = agent.context_every_messages
    return Plan(
        title=agent.auto_title and untitled,
        context=every > 0 and count - since >= every,
        message_count=count,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def transcript(messages: list[dict[str, Any]]) -> str:
    """The text messages of a conversation (wire JSON, seq order) as "Role: text" lines, the
    latest part when it is long."""
    lines: list[str] = []
    for m in messages:
        if m.get("deletedAt") or m.get("messageType", "text") != "text":
            continue
        role = m.get("role")
        if role not in ("user", "assistant"):
            continue
        text = " ".join(str(m.get("content") or "").split())[:LINE_CHARS]
        if text:
            lines.append(f"{'User' if role == 'user' else 'Assistant'}: {text}")
    out = "\n".join(lines)
    return out[-TRANSCRIPT_CHARS:]


def prompt(instructions: str, text: str) -> list[ChatMessage]:
    return [
        {"role": "system", "content": instructions},
        {"role": "user", "content": text},
    ]


async def complete(backend: ModelBackend, messages: list[ChatMessage]) -> tuple[str, TokenUsage]:
    """One model call without tools: its text and usage (estimated when not reported)."""
    parts: list[str] = []
    usage: TokenUsage | None = None
    async for event in backend.stream(messages, []):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Finish):
            usage = event.usage
    text = "".join(parts)
    if usage is None:
        usage = TokenUsage(
            sum(estimate_tokens(str(m.get("content") or "")) for m in messages),
            estimate_tokens(text),
        )
    return text, usage


def clean_title(text: str) -> str | None:
    """A model's answer as a title: its first line without quotes, markup or a "Title:"
    prefix, one line, at most TITLE_CHARS; None if nothing is left."""
    line = next((x for x in text.splitlines() if x.strip()), "")
    line = re.sub(r"^\s*(title\s*:\s*)", "", line, flags=re.IGNORECASE)
    line = " ".join(line.strip().strip("\"'`*#_ ").split())
    line = line.rstrip(".")
    if len(line) > TITLE_CHARS:
        line = line[: TITLE_CHARS - 1].rstrip() + "…"
    return line or None


def _strings(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    out: list[str] = []
    for item in value:
        if isinstance(item, str) and item.strip():
            text = " ".join(item.split())[:ITEM_CHARS]
            if text not in out:
                out.append(text)
        if len(out) >= LIST_ITEMS:
            break
    return out


def parse_context(text: str) -> dict[str, Any] | None:
    """A model's answer as ``context`` (the seed's fields, bounded); None if it holds none.

    Takes the outermost ``{...}`` (models wrap JSON in prose or code fences)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        raw = json.loads(text[start : end + 1])
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    summary = raw.get("summary")
    if isinstance(summary, str) and summary.strip():
        out["summary"] = summary.strip()[:SUMMARY_CHARS]
    for key in ("entities", "topics"):
        items = _strings(raw.get(key))
        if items is not None:
            out[key] = items
    sentiment = raw.get("sentiment")
    if isinstance(sentiment, str) and sentiment.strip():
        out["sentiment"] = sentiment.strip().lower()[:SENTIMENT_CHARS]
    return out or None


Ask = Callable[[str, dict[str, Any]], Awaitable[Any]]


async def describe(
    agent: AgentConfig,
    backend: ModelBackend,
    ask: Ask,
    conversation_id: str,
    history_limit: int,
) -> TokenUsage:
    """Title and/or refresh the context of one conversation, as its agent. ``ask(query,
    data)`` asks the conversation service as the agent ("get", "messages", "update").
    Returns the usage of the model calls made (already reported in the update)."""
    conv = await ask("get", {"conversationId": conversation_id})
    todo = plan(agent, conv if isinstance(conv, dict) else {})
    if not todo:
        return TokenUsage()
    page = await ask("messages", {"conversationId": conversation_id, "limit": history_limit})
    items = page.get("items") if isinstance(page, dict) else None
    text = transcript([m for m in items or [] if isinstance(m, dict)])
    if not text:
        return TokenUsage()
    update: dict[str, Any] = {"conversationId": conversation_id}
    usage = TokenUsage()
    if todo.title:
        answer, used = await complete(backend, prompt(TITLE_INSTRUCTIONS, text))
        usage = usage + used
        title = clean_title(answer)
        if title is not None:
            update["title"] = title
        else:
            logger.info("agent %s gave no usable title for %s", agent.id, conversation_id)
    if todo.context:
        answer, used = await complete(backend, prompt(CONTEXT_INSTRUCTIONS, text))
        usage = usage + used
        context = parse_context(answer)
        if context is not None:
            update["context"] = {**context, "messageCount": todo.message_count}
        else:
            logger.info("agent %s gave no usable context for %s", agent.id, conversation_id)
    if usage.total_tokens:
        update["usage"] = {
            "promptTokens": usage.prompt_tokens,
            "completionTokens": usage.completion_tokens,
            "totalTokens": usage.total_tokens,
        }
        update["cost"] = agent.cost(usage.prompt_tokens, usage.completion_tokens)
    if len(update) > 1:
        await ask("update", update)
    return usage
