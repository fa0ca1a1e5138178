"""Titles and context (parley_agent_bridge.housekeeping) without network: what a model's
answer becomes, when the bridge writes, and what the update it sends carries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley_agent_bridge.config import AgentConfig, demo_agent
from parley_agent_bridge.demo import ScriptedDemoBackend
from parley_agent_bridge.housekeeping import (
    TITLE_CHARS,
    clean_title,
    describe,
    parse_context,
    plan,
    transcript,
)


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ("Paris weather today", "Paris weather today"),
        ('"Paris weather today."\n\nI hope this helps', "Paris weather today"),
        ("Title: **Trams of Lisbon**", "Trams of Lisbon"),
        ("\n\n   \n# Budget  planning\n", "Budget planning"),
        ("", None),
        ('""', None),
    ],
)
def test_a_models_answer_as_a_title(answer: str, title: str | None) -> None:
    assert clean_title(answer) == title


def test_a_long_title_is_cut() -> None:
    title = clean_title("word " * 100)
    assert title is not None and len(title) == TITLE_CHARS and title.endswith("…")


def test_a_models_answer_as_a_context() -> None:
    answer = (
        "Sure! ```json\n"
        + json.dumps(
            {
                "summary": "  A chat about trams. ",
                "entities": ["Lisbon", "Lisbon", 3, "", "x" * 500],
                "topics": ["trams"] * 3 + [f"t{i}" for i in range(50)],
                "sentiment": "POSITIVE",
                "extra": {"ignored": True},
            }
        )
        + "\n```"
    )
    context = parse_context(answer)
    assert context is not None
    assert context["summary"] == "A chat about trams."
    assert context["entities"] == ["Lisbon", "x" * 100]
    assert context["topics"][0] == "trams" and len(context["topics"]) == 20
    assert context["sentiment"] == "positive"
    assert "extra" not in context


@pytest.mark.parametrize(
    "answer", ["", "no json here", "{not json}", "[1, 2]", '{"summary": 3}', "{" * 5000 + "}"]
)
def test_no_context_from_a_useless_answer(answer: str) -> None:
    assert parse_context(answer) is None


def test_when_the_bridge_writes() -> None:
    agent = demo_agent()  # titles on, context every 20 messages
    assert agent.auto_title and agent.context_every_messages == 20
    fresh = {"title": "New conversation", "totalMessages": 3}
    assert plan(agent, fresh).title and not plan(agent, fresh).context
    assert not plan(agent, {**fresh, "titleSource": "user"})
    assert not plan(agent, {**fresh, "titleSource": "agent"})  # titled once
    assert not plan(agent, {**fresh, "title": "Picked by hand"})  # older than titleSource
    named = {"title": "x", "titleSource": "agent", "totalMessages": 20}
    assert plan(agent, named).context
    assert not plan(agent, {**named, "context": {"messageCount": 5}})
    assert plan(agent, {**named, "totalMessages": 25, "context": {"messageCount": 5}}).context
    off = agent.model_copy(update={"auto_title": False, "context_every_messages": 0})
    assert not plan(off, {**fresh, "totalMessages": 500})


def test_the_transcript_holds_the_text_messages() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "messageType": "text", "content": "hi\n  there"},
        {"role": "assistant", "messageType": "thinking", "content": ""},
        {"role": "assistant", "messageType": "tool_call", "content": "Calling x"},
        {"role": "assistant", "messageType": "text", "content": "hello"},
        {"role": "user", "messageType": "text", "content": "gone", "deletedAt": "2026-01-01"},
        {"role": "system", "messageType": "system", "content": "Agent switched"},
    ]
    assert transcript(messages) == "User: hi there\nAssistant: hello"


async def test_describe_sends_one_update_with_the_calls_cost() -> None:
    agent = AgentConfig.model_validate(
        {
            "id": "agent-x",
            "name": "X",
            "model": "m",
            "backend": "demo",
            "price_per_1k_prompt": 1.0,
            "price_per_1k_completion": 2.0,
            "context_every_messages": 2,
        }
    )
    sent: list[tuple[str, dict[str, Any]]] = []

    async def ask(what: str, data: dict[str, Any]) -> Any:
        sent.append((what, data))
        if what == "get":
            return {"title": "New conversation", "totalMessages": 3}
        if what == "messages":
            return {
                "items": [
                    {"role": "user", "messageType": "text", "content": "Plan a trip to Rome"},
                    {"role": "assistant", "messageType": "text", "content": "Sure."},
                ]
            }
        return {}

    usage = await describe(agent, ScriptedDemoBackend(delay=0), ask, "conv-1", 50)
    assert [w for w, _ in sent] == ["get", "messages", "update"]
    update = sent[-1][1]
    assert update["title"] == "Plan a trip to Rome"
    assert update["context"]["messageCount"] == 3
    assert update["context"]["entities"] == ["Rome"]
    assert update["usage"]["totalTokens"] == usage.total_tokens > 0
    assert update["cost"] == agent.cost(usage.prompt_tokens, usage.completion_tokens) > 0


async def test_describe_does_nothing_when_nothing_is_due() -> None:
    sent: list[str] = []

    async def ask(what: str, data: dict[str, Any]) -> Any:
        sent.append(what)
        return {"title": "Mine", "titleSource": "user", "totalMessages": 3}

    usage = await describe(demo_agent(), ScriptedDemoBackend(delay=0), ask, "conv-1", 50)
    assert sent == ["get"] and usage.total_tokens == 0
