"""Who may do what, over the real NATS and store: an outsider can neither read nor write (and
learns nothing), bad input gets the right code and leaves nothing behind, roles and agent
fields per principal kind, an agent switch, a participant who removes themself."""

from __future__ import annotations

from typing import Any

import nats
import pytest

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_conversation.service import ConversationService

from .calls import (
    AGENT,
    ALICE,
    BOB,
    CREATE,
    DELETE,
    EDIT,
    JOIN,
    MALLORY,
    REACT,
    SEND,
    STOP,
    TASK,
    UPDATE,
    create,
    events_since,
)
from .conftest import Request, agent, service_principal

# The agents these tests assign are served (an unserved agentId is NOT_FOUND).
pytestmark = pytest.mark.usefixtures("served_agents")


async def test_outsider_can_neither_read_nor_write(
    service: ConversationService, request_: Request
) -> None:
    cid = (await create(request_))["_id"]
    sent = await request_(SEND, {"conversationId": cid, "content": "secret"}, ALICE)
    mid = sent["data"]["_id"]
    attempts: list[tuple[str, dict[str, Any]]] = [
        (SEND, {"conversationId": cid, "content": "let me in"}),
        (JOIN, {"conversationId": cid}),
        (UPDATE, {"conversationId": cid, "removeParticipants": ["u-mallory"]}),
        (UPDATE, {"conversationId": cid, "title": "mine now"}),
        (EDIT, {"conversationId": cid, "messageId": mid, "content": "x"}),
        (DELETE, {"conversationId": cid, "messageId": mid}),
        (REACT, {"conversationId": cid, "messageId": mid, "emoji": "x"}),
        (STOP, {"conversationId": cid}),
        (TASK, {"conversationId": cid, "title": "t"}),
        (subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}),
        (subjects.QUERY_MESSAGES_LIST, {"conversationId": cid}),
    ]
    for subject, data in attempts:
        for who in (MALLORY, agent("agent-other")):
            r = await request_(subject, data, who)
            assert not r["success"], (subject, r)
            assert r["error"]["code"] == "FORBIDDEN", (subject, r)
            assert "secret" not in jsonutil.dumps(r).decode()
    r = await events_since(request_, cid, principal=MALLORY)
    assert r["error"]["code"] == "FORBIDDEN"
    # A conversation that does not exist answers exactly the same.
    r2 = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": "conv-nope"}, MALLORY)
    r3 = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, MALLORY)
    assert r2["error"] == r3["error"]
    lst = await request_(subjects.QUERY_CONVERSATIONS_LIST, {}, MALLORY)
    assert lst["data"] == {"items": [], "nextCursor": None}
    # Nothing changed.
    log = await events_since(request_, cid)
    assert [f["event"] for f in log["data"]["events"]] == ["conversation:created", "message:new"]


async def test_bad_input_is_refused_with_the_right_code(
    service: ConversationService, request_: Request
) -> None:
    cid = (await create(request_))["_id"]
    bad: list[tuple[str, Any, str]] = [
        (SEND, {"conversationId": cid}, "VALIDATION_ERROR"),  # empty content
        (SEND, {"conversationId": cid, "content": "   "}, "VALIDATION_ERROR"),
        (SEND, {"conversationId": cid, "content": "x", "colour": "red"}, "VALIDATION_ERROR"),
        (SEND, {"conversationId": "a.b.>", "content": "x"}, "VALIDATION_ERROR"),
        (SEND, {"content": "x"}, "VALIDATION_ERROR"),
        (SEND, {"conversationId": cid, "content": "x" * 32_001}, "PAYLOAD_TOO_LARGE"),
        (
            SEND,
            {"conversationId": cid, "content": "x", "metadata": {"$set": 1}},
            "VALIDATION_ERROR",
        ),
        (SEND, {"conversationId": cid, "content": "x", "role": "assistant"}, "FORBIDDEN"),
        (SEND, {"conversationId": cid, "content": "x", "role": "system"}, "FORBIDDEN"),
        (SEND, {"conversationId": cid, "content": "x", "cost": 1.0}, "FORBIDDEN"),
        (
            SEND,
            {
                "conversationId": cid,
                "content": "x",
                "usage": {"promptTokens": 1, "completionTokens": 1, "totalTokens": 2},
            },
            "FORBIDDEN",
        ),
        (SEND, {"conversationId": cid, "content": "x", "messageType": "tool_call"}, "FORBIDDEN"),
        (SEND, [1, 2], "VALIDATION_ERROR"),
        (REACT, {"conversationId": cid, "messageId": "m", "emoji": "a.b"}, "VALIDATION_ERROR"),
        (EDIT, {"conversationId": cid, "messageId": "msg-missing", "content": "x"}, "NOT_FOUND"),
        (UPDATE, {"conversationId": cid, "status": "exploded"}, "VALIDATION_ERROR"),
        (CREATE, {"conversationId": cid}, "CONFLICT"),
        (CREATE, {"title": "x" * 201}, "VALIDATION_ERROR"),
        (
            subjects.QUERY_MESSAGES_LIST,
            {"conversationId": cid, "limit": 100000},
            "VALIDATION_ERROR",
        ),
        (subjects.QUERY_CONVERSATIONS_LIST, {"cursor": "!!!"}, "VALIDATION_ERROR"),
    ]
    for subject, data, code in bad:
        r = await request_(subject, data, ALICE)
        assert not r["success"], (subject, data, r)
        assert r["error"]["code"] == code, (subject, data, r)
        assert r["error"]["message"]
    raw_cases: list[tuple[bytes, str]] = [
        (b"not json", "VALIDATION_ERROR"),
        (b"{}", "VALIDATION_ERROR"),
        (
            jsonutil.dumps({"principal": {"id": "u", "kind": "alien"}, "data": {}}),
            "VALIDATION_ERROR",
        ),
        (
            b'{"principal": {"id": "u-alice", "kind": "user"}, "data": {"content": "'
            + b"x" * 300_000
            + b'"}}',
            "PAYLOAD_TOO_LARGE",
        ),
    ]
    for raw, code in raw_cases:
        r = await request_(SEND, None, raw=raw)
        assert r["error"]["code"] == code, (raw[:40], r)
    # Commands this service does not handle are not answered by it (the gateway refuses
    # unknown events; tool:call belongs to the agent bridge).
    with pytest.raises(nats.errors.NoRespondersError):
        await request_(subjects.command(Event.TYPING_START), {"conversationId": cid}, ALICE)
    # An agent may not act as a user or as the system.
    r = await request_(SEND, {"conversationId": cid, "content": "x", "role": "user"}, AGENT)
    assert r["error"]["code"] == "FORBIDDEN"
    # A rejected write leaves nothing behind; the service is still fine.
    log = await events_since(request_, cid)
    assert [f["seq"] for f in log["data"]["events"]] == [1]
    ok = await request_(SEND, {"conversationId": cid, "content": "still here"}, ALICE)
    assert ok["success"] and ok["data"]["seq"] == 2
    got = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE)
    assert got["data"]["totalMessages"] == 1


async def test_roles_and_agent_fields(service: ConversationService, request_: Request) -> None:
    cid = (await create(request_, agentId="agent-general"))["_id"]
    call = {
        "conversationId": cid,
        "content": "",
        "messageType": "tool_call",
        "toolCalls": [
            {"id": "call-1", "type": "mcp_tool", "function": {"name": "search", "arguments": "{}"}}
        ],
    }
    r = await request_(SEND, call, AGENT)
    assert r["success"] and r["data"]["role"] == "assistant", r
    result = {
        "conversationId": cid,
        "content": "42",
        "messageType": "tool_result",
        "toolResults": [
            {"toolCallId": "call-1", "toolName": "search", "result": {"n": 42}, "success": True}
        ],
    }
    r = await request_(SEND, result, AGENT)
    assert r["success"] and r["data"]["role"] == "tool", r
    thinking = {
        "conversationId": cid,
        "content": "",
        "messageType": "thinking",
        "thinking": {"content": "hmm"},
    }
    assert (await request_(SEND, thinking, AGENT))["data"]["messageType"] == "thinking"
    r = await request_(SEND, {"conversationId": cid, "content": "x", "role": "system"}, AGENT)
    assert r["error"]["code"] == "FORBIDDEN"
    r = await request_(SEND, {"conversationId": cid, "content": "maintenance"}, service_principal())
    assert r["success"] and r["data"]["role"] == "system", r
    r = await request_(
        SEND,
        {
            "conversationId": cid,
            "content": "final",
            "role": "assistant",
            "usage": {"promptTokens": 5, "completionTokens": 5, "totalTokens": 10},
            "cost": 0.5,
        },
        service_principal(),
    )
    assert r["success"] and r["data"]["agentId"] == "agent-general", r
    got = (await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, ALICE))["data"]
    assert got["totalMessages"] == 5 and got["totalTokens"] == 10 and got["totalCost"] == 0.5
    assert got["lastMessage"]["content"] == "final" and got["lastMessage"]["role"] == "assistant"


async def test_agent_switch_writes_a_system_message(
    service: ConversationService, request_: Request
) -> None:
    cid = (await create(request_, agentId="agent-general"))["_id"]
    r = await request_(UPDATE, {"conversationId": cid, "agentId": "agent-code"}, ALICE)
    assert r["success"], r
    assert r["data"]["agentId"] == "agent-code"
    log = (await events_since(request_, cid))["data"]["events"]
    assert [f["event"] for f in log] == [
        "conversation:created",
        "conversation:updated",
        "message:new",
    ]
    system = log[2]["data"]
    assert system["role"] == "system" and system["messageType"] == "system"
    assert system["content"] == "Agent switched from 'agent-general' to 'agent-code'"
    assert system["metadata"] == {"previousAgentId": "agent-general", "newAgentId": "agent-code"}
    # The old agent lost access, the new one has it.
    r = await request_(
        subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, agent("agent-general")
    )
    assert r["error"]["code"] == "FORBIDDEN"
    r = await request_(
        SEND, {"conversationId": cid, "content": "hello from code"}, agent("agent-code")
    )
    assert (
        r["success"] and r["data"]["role"] == "assistant" and r["data"]["agentId"] == "agent-code"
    )


async def test_removing_oneself_ends_access_and_keeps_joined_at(
    service: ConversationService, request_: Request
) -> None:
    cid = (await create(request_))["_id"]
    j = await request_(JOIN, {"conversationId": cid, "sinceSeq": 0}, BOB)
    assert j["success"] and j["data"]["lastSeq"] == 1 and j["data"]["conversation"]["_id"] == cid
    r = await request_(UPDATE, {"conversationId": cid, "removeParticipants": ["u-bob"]}, BOB)
    assert r["success"], r
    bob = next(p for p in r["data"]["participants"] if p.get("userId") == "u-bob")
    assert bob["joinedAt"] and bob["leftAt"]
    for subject, data in [
        (SEND, {"conversationId": cid, "content": "hi"}),
        (JOIN, {"conversationId": cid}),
        (subjects.QUERY_MESSAGES_LIST, {"conversationId": cid}),
    ]:
        assert (await request_(subject, data, BOB))["error"]["code"] == "FORBIDDEN"
    # Alice adds Bob back: a new participant entry, the old one keeps its leftAt.
    r = await request_(UPDATE, {"conversationId": cid, "addParticipants": ["u-bob"]}, ALICE)
    entries = [p for p in r["data"]["participants"] if p.get("userId") == "u-bob"]
    assert len(entries) == 2 and entries[0]["leftAt"] and "leftAt" not in entries[1]
    assert (await request_(SEND, {"conversationId": cid, "content": "back"}, BOB))["success"]
