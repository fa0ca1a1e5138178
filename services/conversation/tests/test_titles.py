"""An agent's title and context over NATS (issue 17): a user's title is kept, the model
call behind the update counts in the totals, and only agents and services may report one."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client

from parley_contract import subjects
from parley_contract.events import Event
from parley_conversation.service import ConversationService

from .conftest import Request, agent, serve_agents, user

CREATE = subjects.command(Event.CONVERSATION_CREATE)
UPDATE = subjects.command(Event.CONVERSATION_UPDATE)
GET = subjects.QUERY_CONVERSATION_GET
ALICE = user("u-alice")
AGENT = agent("agent-general")
USAGE = {"promptTokens": 100, "completionTokens": 20, "totalTokens": 120}


@pytest.fixture(autouse=True)
async def served_agents(nc: Client) -> None:
    await serve_agents(nc, "agent-general")


async def create(request_: Request, **data: Any) -> dict[str, Any]:
    r = await request_(CREATE, {"agentId": "agent-general", **data}, ALICE)
    assert r["success"], r
    conv: dict[str, Any] = r["data"]
    return conv


async def get(request_: Request, cid: str) -> dict[str, Any]:
    r = await request_(GET, {"conversationId": cid}, ALICE)
    assert r["success"], r
    conv: dict[str, Any] = r["data"]
    return conv


async def test_an_agent_titles_an_untitled_conversation_and_its_call_is_counted(
    service: ConversationService, request_: Request
) -> None:
    conv = await create(request_)
    assert conv["title"] == "New conversation" and "titleSource" not in conv
    update = {
        "conversationId": conv["_id"],
        "title": "Trip to Rome",
        "context": {"summary": "Planning", "topics": ["travel"], "messageCount": 3},
        "usage": USAGE,
        "cost": 0.25,
    }
    r = await request_(UPDATE, update, AGENT)
    assert r["success"], r
    assert r["data"]["title"] == "Trip to Rome" and r["data"]["titleSource"] == "agent"
    assert r["data"]["totalTokens"] == 120 and r["data"]["totalCost"] == 0.25
    stored = await get(request_, conv["_id"])
    assert stored["titleSource"] == "agent"
    assert stored["context"] == {"summary": "Planning", "topics": ["travel"], "messageCount": 3}
    assert stored["totalTokens"] == 120 and stored["totalCost"] == 0.25
    assert stored["totalMessages"] == 0  # a model call, not a message


async def test_a_users_title_is_never_replaced_by_an_agents(
    service: ConversationService, request_: Request
) -> None:
    conv = await create(request_)
    r = await request_(UPDATE, {"conversationId": conv["_id"], "title": "Mine"}, ALICE)
    assert r["success"] and r["data"]["titleSource"] == "user"
    update = {"conversationId": conv["_id"], "title": "Auto", "usage": USAGE, "cost": 0.5}
    r = await request_(UPDATE, update, AGENT)
    assert r["success"], r
    assert r["data"]["title"] == "Mine"
    stored = await get(request_, conv["_id"])
    # Nothing changed, yet the call was made: its cost still counts.
    assert stored["title"] == "Mine" and stored["titleSource"] == "user"
    assert stored["totalCost"] == 0.5
    # Created with a title: a user's from the start.
    titled = await create(request_, title="Named at birth")
    assert titled["titleSource"] == "user"
    r = await request_(UPDATE, {"conversationId": titled["_id"], "title": "Auto"}, AGENT)
    assert r["success"] and r["data"]["title"] == "Named at birth"


async def test_only_agents_and_services_report_a_model_call(
    service: ConversationService, request_: Request
) -> None:
    conv = await create(request_)
    for extra in ({"cost": 1.0}, {"usage": USAGE}):
        r = await request_(UPDATE, {"conversationId": conv["_id"], "title": "x", **extra}, ALICE)
        assert not r["success"]
        assert r["error"]["code"] == "FORBIDDEN"
    r = await request_(UPDATE, {"conversationId": conv["_id"], "cost": -1}, AGENT)
    assert r["error"]["code"] == "VALIDATION_ERROR"
    # An agent may describe, not change the other details.
    r = await request_(UPDATE, {"conversationId": conv["_id"], "description": "x"}, AGENT)
    assert r["error"]["code"] == "FORBIDDEN"
    assert (await get(request_, conv["_id"]))["totalCost"] == 0
