"""Issue 12, finding 6, as an attacker tries it over NATS against the real service and store:
an observer posting, a participant removing the creator or closing the conversation, bob
posting as "Alice", a user named like an agent editing the agent's messages."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client

from parley_contract import subjects
from parley_contract.events import Event
from parley_conversation.service import ConversationService

from .conftest import Request, agent, serve_agents, service_principal, user

CREATE = subjects.command(Event.CONVERSATION_CREATE)
UPDATE = subjects.command(Event.CONVERSATION_UPDATE)
SEND = subjects.command(Event.MESSAGE_SEND)
EDIT = subjects.command(Event.MESSAGE_EDIT)
DELETE = subjects.command(Event.MESSAGE_DELETE)
REACT = subjects.command(Event.MESSAGE_REACT)
DELETE_CONV = subjects.command(Event.CONVERSATION_DELETE)

ALICE, BOB, OBS = user("u-alice"), user("u-bob"), user("u-obs")
AGENT = agent("agent-1")


@pytest.fixture(autouse=True)
async def served_agents(nc: Client) -> None:
    """agent-1 is served (an agentId nobody serves is NOT_FOUND)."""
    await serve_agents(nc, "agent-1")


async def room(request_: Request) -> str:
    r = await request_(
        CREATE,
        {
            "agentId": "agent-1",
            "participants": ["u-bob", "u-carol", {"userId": "u-obs", "role": "observer"}],
        },
        ALICE,
    )
    assert r["success"], r
    cid: str = r["data"]["_id"]
    return cid


def forbidden(r: dict[str, Any]) -> bool:
    return r["success"] is False and r["error"]["code"] == "FORBIDDEN"


async def test_an_observer_reads_but_cannot_post(
    service: ConversationService, request_: Request
) -> None:
    cid = await room(request_)
    r = await request_(SEND, {"conversationId": cid, "content": "I am watching"}, OBS)
    assert forbidden(r), r
    assert r["error"]["details"] == {"role": "observer", "action": "post"}
    sent = await request_(SEND, {"conversationId": cid, "content": "hello"}, BOB)
    assert sent["success"]
    r = await request_(
        REACT, {"conversationId": cid, "messageId": sent["data"]["_id"], "emoji": "x"}, OBS
    )
    assert forbidden(r), r
    page = await request_(subjects.QUERY_MESSAGES_LIST, {"conversationId": cid}, OBS)
    assert [m["content"] for m in page["data"]["items"]] == ["hello"]
    r = await request_(UPDATE, {"conversationId": cid, "removeParticipants": ["u-obs"]}, OBS)
    assert r["success"], r  # anyone may quit


async def test_only_the_owner_removes_the_owner_or_closes(
    service: ConversationService, request_: Request
) -> None:
    cid = await room(request_)
    for attempt in (
        {"removeParticipants": ["u-alice"]},
        {"participants": [{"userId": "u-bob"}, {"userId": "u-carol"}]},  # whole list, no alice
        {"status": "closed"},
        {"status": "archived"},
        {"removeParticipants": ["u-carol"]},
    ):
        r = await request_(UPDATE, {"conversationId": cid, **attempt}, BOB)
        assert forbidden(r), (attempt, r)
        r = await request_(UPDATE, {"conversationId": cid, **attempt}, AGENT)
        assert forbidden(r), (attempt, r)
    conv = (await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE))["data"]
    assert conv["status"] == "active"
    assert all(p.get("leftAt") is None for p in conv["participants"])
    # What participants may do.
    r = await request_(UPDATE, {"conversationId": cid, "title": "renamed"}, BOB)
    assert r["success"], r
    r = await request_(UPDATE, {"conversationId": cid, "addParticipants": ["u-dave"]}, BOB)
    assert r["success"], r
    # The owner may; so may a service.
    r = await request_(UPDATE, {"conversationId": cid, "removeParticipants": ["u-carol"]}, ALICE)
    assert r["success"], r
    r = await request_(
        UPDATE, {"conversationId": cid, "removeParticipants": ["u-alice"]}, service_principal()
    )
    assert r["success"], r
    r = await request_(UPDATE, {"conversationId": cid, "status": "closed"}, service_principal())
    assert r["success"] and r["data"]["status"] == "closed", r


async def test_bob_cannot_post_as_alice(service: ConversationService, request_: Request) -> None:
    cid = await room(request_)
    r = await request_(SEND, {"conversationId": cid, "content": "hi", "name": "Alice"}, BOB)
    assert r["success"] and r["data"]["name"] == "u-bob", r  # the token's name claim
    r = await request_(
        SEND,
        {"conversationId": cid, "content": "hi", "name": "Alice"},
        {"id": "u-bob", "kind": "user"},  # no name claim: the id
    )
    assert r["data"]["name"] == "u-bob", r


async def test_whose_messages_may_be_changed(
    service: ConversationService, request_: Request
) -> None:
    cid = await room(request_)
    # A user whose id is the agent's is a stranger here, and owns none of its messages.
    twin = user("agent-1")
    answer = await request_(SEND, {"conversationId": cid, "content": "answer"}, AGENT)
    assert answer["success"], answer
    mid = answer["data"]["_id"]
    r = await request_(EDIT, {"conversationId": cid, "messageId": mid, "content": "pwned"}, twin)
    assert forbidden(r), r
    bob_said = await request_(SEND, {"conversationId": cid, "content": "bob"}, BOB)
    bid = bob_said["data"]["_id"]
    carol = user("u-carol")
    r = await request_(EDIT, {"conversationId": cid, "messageId": bid, "content": "x"}, carol)
    assert forbidden(r) and r["error"]["details"]["action"] == "edit-any-message", r
    r = await request_(DELETE, {"conversationId": cid, "messageId": bid}, carol)
    assert forbidden(r), r
    r = await request_(EDIT, {"conversationId": cid, "messageId": bid, "content": "x"}, ALICE)
    assert forbidden(r), r  # the owner moderates by deleting, never edits others' words
    r = await request_(DELETE, {"conversationId": cid, "messageId": bid}, ALICE)
    assert r["success"] and r["data"]["deletedAt"], r
    mine = await request_(SEND, {"conversationId": cid, "content": "mine"}, carol)
    r = await request_(
        EDIT, {"conversationId": cid, "messageId": mine["data"]["_id"], "content": "ok"}, carol
    )
    assert r["success"] and r["data"]["content"] == "ok", r


async def test_only_the_owner_deletes_the_conversation(
    service: ConversationService, request_: Request
) -> None:
    cid = await room(request_)
    # Participants, observers, the agent, and an agent whose id is the owner's (invited).
    r = await request_(
        UPDATE, {"conversationId": cid, "addParticipants": [{"agentId": "u-alice"}]}, ALICE
    )
    assert r["success"], r
    for who in (BOB, OBS, AGENT, agent("u-alice")):
        r = await request_(DELETE_CONV, {"conversationId": cid}, who)
        assert forbidden(r), (who, r)
    r = await request_(DELETE_CONV, {"conversationId": cid}, ALICE)
    assert r["success"] and r["data"]["deletedAt"], r
