from __future__ import annotations

import pytest

from parley_contract import subjects
from parley_contract.commands import MessageSend
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import (
    COMMANDS,
    DURABLE_EVENTS,
    EPHEMERAL_EVENTS,
    Event,
    PrincipalKind,
    may_send,
    parse_command,
)
from parley_contract.routes import parse_payload


def test_protocol_commands_are_registered() -> None:
    for name in [
        "conversation:create",
        "conversation:join",
        "conversation:leave",
        "conversation:update",
        "message:send",
        "message:edit",
        "message:delete",
        "message:react",
        "typing:start",
        "typing:stop",
        "presence:online",
        "presence:offline",
        "tool:call",
        "task:create",
    ]:
        assert parse_command(name) is not None, name


def test_server_only_events_are_not_commands() -> None:
    assert parse_command("message:new") is None
    assert parse_command("connected") is None
    assert parse_command(42) is None
    assert parse_command("nope") is None


def test_durable_and_ephemeral_are_disjoint() -> None:
    assert not DURABLE_EVENTS & EPHEMERAL_EVENTS
    assert Event.MESSAGE_NEW in DURABLE_EVENTS
    assert Event.TYPING_START in EPHEMERAL_EVENTS
    assert Event.MESSAGE_STREAM_DELTA in EPHEMERAL_EVENTS


def test_allow_list() -> None:
    assert may_send(PrincipalKind.AGENT, Event.TOOL_CALL)
    assert not may_send(PrincipalKind.USER, Event.TOOL_CALL)
    assert all(may_send(PrincipalKind.USER, e) or e in {Event.TOOL_CALL} for e in COMMANDS)


def test_subjects_are_nats_tokens() -> None:
    assert subjects.command(Event.MESSAGE_SEND) == "parley.cmd.message.send"
    assert subjects.conversation_events("conv-1") == "parley.conv.conv-1.evt"


def test_payload_errors_name_the_field() -> None:
    with pytest.raises(ParleyError) as info:
        parse_payload(Event.MESSAGE_SEND, {"conversationId": "a.b", "content": "x"})
    assert info.value.code is ErrorCode.VALIDATION_ERROR
    assert info.value.details and info.value.details["field"] == "conversationId"
    with pytest.raises(ParleyError) as info:
        parse_payload(Event.MESSAGE_SEND, {"conversationId": "c", "contnet": "x"})
    assert "unknown field" in info.value.message
    ok = parse_payload(
        Event.MESSAGE_SEND, {"conversationId": "c", "content": "hi", "clientMessageId": "k"}
    )
    assert isinstance(ok, MessageSend) and ok.client_message_id == "k"
