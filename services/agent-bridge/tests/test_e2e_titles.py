"""Titles and context (issue 17) end to end: real gateway, conversation service, agent
bridge, NATS and store; the demo backend answers the housekeeping prompts deterministically."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from parley_agent_bridge.demo import demo_title
from parley_agent_bridge.housekeeping import TITLE_INSTRUCTIONS
from parley_agent_bridge.openai_stub import OpenAIStub, Step
from parley_client.testing import WsClient
from parley_devstack.stack import Stack

Connect = Callable[..., Awaitable[WsClient]]

pytestmark = pytest.mark.timeout(180)

LLM_AGENT = "agent-llm"  # conftest.agents_file: the scripted OpenAI-compatible server
PRICE_PROMPT, PRICE_COMPLETION = 1.0, 2.0  # USD per 1k tokens, as configured there
BRIEF = "agent-brief"  # demo backend, context every 6 messages
QUIET = "agent-quiet"  # demo backend, neither titles nor context


def _demo(agent_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": agent_id,
        "name": agent_id,
        "model": "parley-demo-1",
        "backend": "demo",
        "price_per_1k_prompt": 0.01,
        "price_per_1k_completion": 0.03,
        **extra,
    }


@pytest.fixture(scope="module")
def titles_stack(
    tmp_path_factory: pytest.TempPathFactory, stack_factory: Callable[..., Stack]
) -> Iterator[Stack]:
    agents = [
        _demo(BRIEF, context_every_messages=6),
        _demo(QUIET, auto_title=False, context_every_messages=0),
    ]
    s = stack_factory(
        tmp_path_factory.mktemp("titles"), PARLEY_AGENT_BRIDGE_AGENTS_JSON=json.dumps(agents)
    )
    try:
        yield s
    finally:
        s.stop()


async def untitled(client: WsClient, agent_id: str) -> str:
    """A conversation created without a title (the default one), joined."""
    reply = await client.call("conversation:create", {"agentId": agent_id})
    assert reply["success"], reply
    assert reply["data"]["title"] == "New conversation"
    assert "titleSource" not in reply["data"]
    cid: str = reply["data"]["_id"]
    joined = await client.call("conversation:join", {"conversationId": cid})
    assert joined["success"], joined
    return cid


def updates(client: WsClient, cid: str) -> list[dict[str, Any]]:
    return [f["data"] for f in client.events("conversation:updated", cid)]


async def test_the_demo_agent_titles_the_conversation_after_the_first_exchange(
    titles_stack: Stack, connect: Connect
) -> None:
    client = await connect(titles_stack)
    cid = await untitled(client, "agent-demo")
    question = "What is the weather in Paris today?"
    user = await client.send(cid, question)
    await client.answer(user)
    frame = await client.wait_for(
        lambda f: f.get("event") == "conversation:updated" and f["data"].get("_id") == cid
    )
    expected = demo_title(f"User: {question}")
    assert expected == "What is the weather in Paris"
    assert frame["data"]["title"] == expected
    assert frame["data"]["titleSource"] == "agent"
    assert isinstance(frame.get("seq"), int)  # durable: replayed to a client that rejoins
    # What everyone reads afterwards, the title call counted in the totals.
    conv = await client.http_get(f"/v1/conversations/{cid}")
    assert conv["title"] == expected
    assert conv["titleSource"] == "agent"
    page = await client.http_get(f"/v1/conversations/{cid}/messages")
    messages = page["items"]
    assert conv["totalCost"] > sum(m.get("cost") or 0 for m in messages)
    assert conv["totalTokens"] > sum((m.get("usage") or {}).get("totalTokens", 0) for m in messages)
    listed = await client.http_get("/v1/conversations")
    assert [c["title"] for c in listed["items"] if c["_id"] == cid] == [expected]
    # Named once: a second exchange leaves the title as it is.
    again = await client.send(cid, "And in Berlin?")
    await client.answer(again)
    conv = await client.http_get(f"/v1/conversations/{cid}")
    assert conv["title"] == expected


async def test_a_users_title_is_kept_and_the_context_refreshed(
    titles_stack: Stack, connect: Connect
) -> None:
    client = await connect(titles_stack)
    cid = await untitled(client, BRIEF)
    renamed = await client.call("conversation:update", {"conversationId": cid, "title": "Mine"})
    assert renamed["success"], renamed
    assert renamed["data"]["titleSource"] == "user"
    first = await client.send(cid, "Tell me about Lisbon trams, I love them")
    await client.answer(first)  # 3 messages so far (the thinking one counts): no context yet
    second = await client.send(cid, "Which Lisbon trams are the oldest?")
    await client.answer(second)  # 6: the context is written (the 6th is this answer)
    frame = await client.wait_for(
        lambda f: (
            f.get("event") == "conversation:updated"
            and f["data"].get("_id") == cid
            and f["data"].get("context") is not None
        )
    )
    context = frame["data"]["context"]
    assert context["summary"].startswith("2 user messages and 2 answers.")
    assert "Lisbon" in context["entities"]
    assert context["topics"][0] == "lisbon"  # the most used long word
    assert "trams" in context["topics"]
    assert context["sentiment"] == "positive"
    assert context["messageCount"] == 6
    # A user wrote the title: the agent, which would have titled the first exchange, did not.
    assert frame["data"]["title"] == "Mine"
    assert all(u["title"] == "Mine" for u in updates(client, cid) if u.get("context"))
    conv = await client.http_get(f"/v1/conversations/{cid}")
    assert conv["title"] == "Mine" and conv["titleSource"] == "user"
    assert conv["context"]["messageCount"] == 6


async def test_titles_and_context_can_be_turned_off_per_agent(
    titles_stack: Stack, connect: Connect
) -> None:
    client = await connect(titles_stack)
    quiet = await untitled(client, QUIET)
    brief = await untitled(client, BRIEF)
    for cid in (quiet, brief):
        user = await client.send(cid, "hello there")
        await client.answer(user)
    # The configured agent titles its conversation; by then the quiet one would have too.
    await client.wait_for(
        lambda f: f.get("event") == "conversation:updated" and f["data"].get("_id") == brief
    )
    more = await client.send(quiet, "Still there?")
    await client.answer(more)
    assert updates(client, quiet) == []
    conv = await client.http_get(f"/v1/conversations/{quiet}")
    assert conv["title"] == "New conversation" and "context" not in conv


async def test_the_models_own_title_through_an_openai_compatible_backend(
    titles_stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    """The title comes from the agent's model (here the scripted server): the request it got,
    the title it wrote, cleaned, and its cost in the conversation's totals."""
    # The title request's user message is the transcript ("User: ..."): only it has this.
    openai_stub.script(
        "User: kiwi-e2e", Step(content=['"Kiwi ', 'harvest plan."'], usage=(100, 20))
    )
    openai_stub.script("kiwi-e2e", Step(content=["Pick them ", "in May."], usage=(50, 10)))
    client = await connect(titles_stack)
    cid = await untitled(client, LLM_AGENT)
    user = await client.send(cid, "kiwi-e2e: when do I harvest?")
    final = await client.answer(user)
    assert final["content"] == "Pick them in May."
    frame = await client.wait_for(
        lambda f: f.get("event") == "conversation:updated" and f["data"].get("_id") == cid
    )
    assert frame["data"]["title"] == "Kiwi harvest plan"
    assert frame["data"]["titleSource"] == "agent"
    asked = [
        r for r in openai_stub.requests if r["messages"][0].get("content") == TITLE_INSTRUCTIONS
    ]
    assert asked and "User: kiwi-e2e: when do I harvest?" in asked[-1]["messages"][1]["content"]
    assert "Assistant: Pick them in May." in asked[-1]["messages"][1]["content"]
    assert not asked[-1].get("tools")  # a plain completion, no tools offered
    title_cost = round(100 / 1000 * PRICE_PROMPT + 20 / 1000 * PRICE_COMPLETION, 8)
    conv = await client.http_get(f"/v1/conversations/{cid}")
    assert conv["totalCost"] == pytest.approx(final["cost"] + title_cost)
    assert conv["totalTokens"] == final["usage"]["totalTokens"] + 120
