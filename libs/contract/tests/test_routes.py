"""The route table: one entry per command, and the one-pass decode a service relies on."""

from __future__ import annotations

import pytest

from parley_contract import jsonutil
from parley_contract.commands import MessageSend
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import COMMANDS, Event, PrincipalKind
from parley_contract.limits import MAX_CONTENT_CHARS
from parley_contract.routes import ROUTES, Service, route_of, routes_of

ALICE = {"id": "u-alice", "kind": "user"}


def _body(data: object, **extra: object) -> bytes:
    return jsonutil.dumps({"principal": ALICE, "data": data, **extra})


def test_every_command_has_exactly_one_route() -> None:
    assert set(ROUTES) == set(COMMANDS)
    assert route_of("message:send") is ROUTES[Event.MESSAGE_SEND]
    assert route_of("message:new") is None  # an event, not a command
    assert route_of(42) is None and route_of("nope") is None


def test_subjects_and_services() -> None:
    send = ROUTES[Event.MESSAGE_SEND]
    assert send.subject == "parley.cmd.message.send"
    assert send.service is Service.CONVERSATION and send.writes
    assert ROUTES[Event.TOOL_CALL].service is Service.AGENT_BRIDGE
    assert {r.event for r in routes_of(Service.GATEWAY)} == {
        Event.CONVERSATION_LEAVE,
        Event.TYPING_START,
        Event.TYPING_STOP,
        Event.PRESENCE_ONLINE,
        Event.PRESENCE_OFFLINE,
    }
    # Who may send it is the event registry's allow-list.
    assert not ROUTES[Event.TOOL_CALL].may_send(PrincipalKind.USER)
    assert ROUTES[Event.TOOL_CALL].may_send(PrincipalKind.AGENT)


def test_decode_validates_the_payload_in_one_pass() -> None:
    route = ROUTES[Event.MESSAGE_SEND]
    req = route.decode(_body({"conversationId": "c1", "content": "hi"}, idempotencyKey="k"))
    assert isinstance(req.data, MessageSend) and req.data.content == "hi"
    assert req.principal.id == "u-alice" and req.idempotency_key == "k"


@pytest.mark.parametrize(
    ("data", "code", "field"),
    [
        ({"conversationId": "a.b", "content": "x"}, ErrorCode.VALIDATION_ERROR, "conversationId"),
        ({"conversationId": "c", "contnet": "x"}, ErrorCode.VALIDATION_ERROR, "contnet"),
        (
            {"conversationId": "c", "content": "x", "metadata": {"$set": 1}},
            ErrorCode.VALIDATION_ERROR,
            "metadata.$set",
        ),
        ("not an object", ErrorCode.VALIDATION_ERROR, "data"),
        (
            {"conversationId": "c", "content": "x" * (MAX_CONTENT_CHARS + 1)},
            ErrorCode.PAYLOAD_TOO_LARGE,
            "content",
        ),
    ],
)
def test_decode_errors_name_the_field_as_the_client_wrote_it(
    data: object, code: ErrorCode, field: str
) -> None:
    with pytest.raises(ParleyError) as info:
        ROUTES[Event.MESSAGE_SEND].decode(_body(data))
    assert info.value.code is code
    assert info.value.details and info.value.details["field"] == field


def test_content_limit_is_one_value() -> None:
    ok = {"conversationId": "c", "messageId": "m", "content": "x" * MAX_CONTENT_CHARS}
    ROUTES[Event.MESSAGE_EDIT].parse(ok)
    with pytest.raises(ParleyError) as info:
        ROUTES[Event.MESSAGE_EDIT].parse({**ok, "content": ok["content"] + "x"})
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert info.value.details == {"field": "content", "limit": MAX_CONTENT_CHARS}
