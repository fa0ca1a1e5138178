"""Unit tests of the domain rules (no network, no store)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from parley_contract import jsonutil
from parley_contract.commands import ConversationCreate, ConversationUpdate, MessageSend, TaskCreate
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Message, MessageType, Role
from parley_conversation import domain
from parley_conversation.documents import message_doc, message_entry, wire

ALICE = Principal(id="u-alice", kind=PrincipalKind.USER, name="Alice")
BOB = Principal(id="u-bob", kind=PrincipalKind.USER)
AGENT = Principal(id="agent-1", kind=PrincipalKind.AGENT)
SERVICE = Principal(id="svc", kind=PrincipalKind.SERVICE)
_SAMPLES = [
    jsonutil.loads(line)["message"]
    for line in (Path(__file__).resolve().parents[3] / "libs/contract/tests/data")
    .joinpath("sample-messages.jsonl")
    .read_text()
    .splitlines()
    if line.strip()
]


def send(**data: Any) -> MessageSend:
    data.setdefault("conversationId", "c1")
    return MessageSend.model_validate(data)


def code_of(fn: Any, *args: Any) -> ErrorCode:
    with pytest.raises(ParleyError) as exc:
        fn(*args)
    return exc.value.code


def test_creator_and_participants() -> None:
    cmd = ConversationCreate.model_validate(
        {
            "title": "t",
            "agentId": "agent-1",
            "participants": ["u-bob", "u-alice", {"id": "agent-2", "kind": "agent"}],
            "tags": ["x"],
        }
    )
    conv = domain.new_conversation(ALICE, cmd)
    ids = [(p.user_id, p.agent_id, p.role.value) for p in conv.participants]
    assert ids == [
        ("u-alice", None, "user"),
        ("u-bob", None, "user"),
        (None, "agent-2", "agent"),
        (None, "agent-1", "agent"),
    ]
    assert conv.id == conv.conversation_id and conv.created_by == "u-alice"
    assert all(p.joined_at == conv.created_at for p in conv.participants)


def test_access() -> None:
    conv = domain.new_conversation(ALICE, ConversationCreate(agent_id="agent-1"))
    assert domain.can_access(conv, ALICE)
    assert not domain.can_access(conv, BOB)
    assert domain.can_access(conv, AGENT)
    assert not domain.can_access(conv, Principal(id="agent-2", kind=PrincipalKind.AGENT))
    assert domain.can_access(conv, SERVICE)
    # A user whose id equals the agent's id is still not the agent.
    assert not domain.can_access(conv, Principal(id="agent-1", kind=PrincipalKind.USER))
    left = domain.apply_update(
        conv,
        ALICE,
        ConversationUpdate.model_validate(
            {"conversationId": conv.id, "removeParticipants": ["u-alice"]}
        ),
    ).conversation
    assert not domain.can_access(left, ALICE)
    assert code_of(domain.authorize, left, ALICE) is ErrorCode.FORBIDDEN
    assert code_of(domain.authorize, None, ALICE) is ErrorCode.FORBIDDEN


def test_roles() -> None:
    assert domain.resolve_role(ALICE, send(content="hi")) == (Role.USER, MessageType.TEXT)
    assert domain.resolve_role(AGENT, send(content="hi")) == (Role.ASSISTANT, MessageType.TEXT)
    assert domain.resolve_role(AGENT, send(messageType="tool_result")) == (
        Role.TOOL,
        MessageType.TOOL_RESULT,
    )
    assert domain.resolve_role(SERVICE, send(content="x")) == (Role.SYSTEM, MessageType.SYSTEM)
    assert domain.resolve_role(SERVICE, send(content="x", role="assistant")) == (
        Role.ASSISTANT,
        MessageType.TEXT,
    )
    forbidden = [
        (ALICE, send(content="x", role="assistant")),
        (ALICE, send(content="x", role="system")),
        (ALICE, send(content="x", messageType="thinking")),
        (ALICE, send(content="x", cost=0.1)),
        (ALICE, send(content="x", latency=3)),
        (ALICE, send(content="x", finishReason="stop")),
        (AGENT, send(content="x", role="user")),
        (AGENT, send(content="x", role="system")),
        (AGENT, send(content="x", role="tool", messageType="text")),
    ]
    for principal, cmd in forbidden:
        assert code_of(domain.resolve_role, principal, cmd) is ErrorCode.FORBIDDEN, cmd


def test_new_message() -> None:
    m = domain.new_message(ALICE, send(content="hi", clientMessageId="c-1"))
    assert m.role is Role.USER and m.created_by == "u-alice" and m.name == "Alice"
    assert m.client_message_id == "c-1" and m.seq is None and m.agent_id is None
    a = domain.new_message(
        AGENT,
        send(content="answer", usage={"promptTokens": 1, "completionTokens": 1, "totalTokens": 2}),
    )
    assert a.agent_id == "agent-1" and a.usage is not None
    assert code_of(domain.new_message, ALICE, send(content="  ")) is ErrorCode.VALIDATION_ERROR
    # The contract refuses these first (parley_contract.limits); the domain checks again
    # for a command built without validation.
    bad_meta = send(content="x").model_copy(update={"metadata": {"a": {"b.c": 1}}})
    assert code_of(domain.new_message, ALICE, bad_meta) is ErrorCode.VALIDATION_ERROR
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(20):
        cur["k"] = {}
        cur = cur["k"]
    deep_meta = send(content="x").model_copy(update={"metadata": deep})
    assert code_of(domain.new_message, ALICE, deep_meta) is ErrorCode.VALIDATION_ERROR
    with pytest.raises(ValidationError):
        send(content="x", metadata=deep)


def test_totals_of_a_batch() -> None:
    msgs = [
        domain.new_message(
            AGENT,
            send(
                content=f"m{i}",
                usage={"promptTokens": 1, "completionTokens": 2, "totalTokens": 3},
                cost=0.5,
            ),
        ).model_copy(update={"seq": 10 - i})
        for i in range(3)
    ]
    t = domain.totals_of(msgs, [10, 9, 8, 11])
    assert (t.messages, t.tokens, t.cost, t.max_seq) == (3, 9, 1.5, 11)
    lm = t.last_message
    assert lm is not None and lm.seq == 10 and lm.role == "assistant"
    assert lm.message_id == msgs[0].id


def test_update_and_agent_switch() -> None:
    conv = domain.new_conversation(ALICE, ConversationCreate(agent_id="agent-1"))
    change = domain.apply_update(
        conv, ALICE, ConversationUpdate(conversation_id=conv.id, agent_id="agent-2", title="new")
    )
    assert change.agent_switched and change.previous_agent_id == "agent-1"
    assert set(change.changed) == {"title", "agent_id", "participants"}
    agents = [
        (p.agent_id, p.left_at is None) for p in change.conversation.participants if p.agent_id
    ]
    assert agents == [("agent-1", False), ("agent-2", True)]
    same = domain.apply_update(conv, ALICE, ConversationUpdate(conversation_id=conv.id))
    assert same.changed == []
    sysmsg = domain.agent_switch_message(
        conv.id,
        "agent-1",
        "agent-2",
        "u-alice",
        {"agent-1": "General Assistant", "agent-2": "Code Expert"},
    )
    assert sysmsg.content == "Agent switched from 'General Assistant' to 'Code Expert'"
    assert sysmsg.metadata == {"previousAgentId": "agent-1", "newAgentId": "agent-2"}
    assert sysmsg.role is Role.SYSTEM and sysmsg.message_type is MessageType.SYSTEM
    nulled = ConversationUpdate.model_validate({"conversationId": conv.id, "title": None})
    assert code_of(domain.apply_update, conv, ALICE, nulled) is ErrorCode.VALIDATION_ERROR


def test_edit_delete_rules() -> None:
    m = domain.new_message(ALICE, send(content="hi"))
    assert domain.edited(m, ALICE, "ho").content == "ho"
    assert code_of(domain.edited, m, BOB, "x") is ErrorCode.FORBIDDEN
    assert domain.edited(m, SERVICE, "moderated").updated_by == "svc"
    d = domain.deleted(m, ALICE)
    assert d.content == "" and not d.is_active and d.deleted_at is not None
    assert code_of(domain.deleted, d, ALICE) is ErrorCode.CONFLICT
    assert code_of(domain.edited, d, ALICE, "x") is ErrorCode.CONFLICT
    assert code_of(domain.check_emoji, "a.b") is ErrorCode.VALIDATION_ERROR
    assert domain.check_emoji("🎉") == "🎉"


def test_task() -> None:
    conv = domain.new_conversation(ALICE, ConversationCreate(agent_id="agent-1"))
    task = domain.new_task(ALICE, TaskCreate(conversation_id=conv.id, title="do"), conv)
    assert task["agentId"] == "agent-1" and task["status"] == "pending"


def test_updates_always_move_updated_at_forward() -> None:
    conv = domain.new_conversation(ALICE, ConversationCreate())
    assert conv.updated_at is not None
    future = conv.model_copy(update={"updated_at": conv.updated_at + timedelta(seconds=5)})
    change = domain.apply_update(
        future, ALICE, ConversationUpdate(conversation_id=conv.id, title="x")
    )
    assert change.conversation.updated_at == future.updated_at + timedelta(milliseconds=1)  # type: ignore[operator]
    left = domain.apply_update(
        future,
        ALICE,
        ConversationUpdate.model_validate(
            {"conversationId": conv.id, "removeParticipants": ["u-alice"]}
        ),
    ).conversation
    assert left.updated_at is not None and future.updated_at is not None
    assert left.updated_at > future.updated_at


def test_cap_page_keeps_at_least_one_item_and_refuses_one_over_the_limit() -> None:
    items = ["a", "b", "c", "d"]
    assert domain.cap_page(items, [10, 10, 10, 10], 25, 100) == (["a", "b"], True)
    assert domain.cap_page(items, [10, 10, 10, 10], 25, 100, keep_end=True) == (["c", "d"], True)
    assert domain.cap_page(items, [10, 10, 10, 10], 40, 100) == (items, False)
    assert domain.cap_page(items, [50, 10, 10, 10], 25, 100) == (["a"], True)
    assert domain.cap_page([], [], 25, 100) == ([], False)
    with pytest.raises(ParleyError) as err:
        domain.cap_page(items, [10, 10, 10, 500], 25, 100, keep_end=True)
    assert err.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert err.value.details == {"index": 3, "bytes": 500, "maxBytes": 100}


@pytest.mark.parametrize("case", range(len(_SAMPLES)))
def test_a_message_is_serialized_once_for_the_store_and_the_wire(case: int) -> None:
    """The log entry and the frame's data come from one serialization (entries.log_entry):
    the same as the stored document (message_doc) and the wire JSON (wire), dates stored
    as dates, for every seed sample, sent or edited."""
    msg = Message.model_validate(_SAMPLES[case])
    for m in (msg, domain.edited(msg, SERVICE, "changed")):
        doc, data = message_entry(m)
        assert doc == message_doc(m)
        assert data == wire(m)
        assert isinstance(doc["createdAt"], datetime) and isinstance(data["createdAt"], str)
