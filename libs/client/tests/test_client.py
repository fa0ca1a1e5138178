"""parley_client against a real stack: what a program using it sees."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from parley_client import ErrorCode, Event, Frame, ParleyClient, ParleyError
from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_contract.models import Message
from parley_contract.server_events import ConnectedData
from parley_devstack.servers import free_port
from parley_devstack.stack import Stack


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def token(sub: str, kind: PrincipalKind = PrincipalKind.USER) -> str:
    return mint_token(sub, kind, name=sub.title())


def is_new(frame: Frame) -> bool:
    return frame.event == Event.MESSAGE_NEW


async def test_send_and_receive_typed(stack: Stack) -> None:
    alice, bob = uid("alice"), uid("bob")
    async with (
        ParleyClient(stack.gateway_url(0), token(alice)) as a,
        ParleyClient(stack.gateway_url(1), token(bob)) as b,
    ):
        assert a.principal is not None and a.principal.id == alice
        conv = await a.create_conversation(title="typed", participants=[bob])
        assert conv.title == "typed" and conv.id
        joined = await b.join(conv.id, since_seq=0)
        assert joined.last_seq >= 1
        events = b.events()
        sent = await a.send_message(conv.id, "hello bob")
        assert isinstance(sent, Message) and sent.content == "hello bob" and sent.seq
        frame = await events.next(10)
        while not is_new(frame):
            frame = await events.next(10)
        assert isinstance(frame.data, Message) and frame.data.id == sent.id
        assert frame.seq == sent.seq and frame.conversation_id == conv.id
        assert b.last_seq(conv.id) == sent.seq
        events.close()


async def test_failures_raise_parley_error(stack: Stack) -> None:
    async with ParleyClient(stack.gateway_url(0), token(uid("carol"))) as c:
        with pytest.raises(ParleyError) as err:
            await c.send_message(uid("nowhere"), "hi")
        assert err.value.code is ErrorCode.FORBIDDEN
        conv = await c.create_conversation(title="x")
        with pytest.raises(ParleyError) as err:
            await c.send_message(conv.id, "x" * 40_000)
        assert err.value.code is ErrorCode.PAYLOAD_TOO_LARGE
        with pytest.raises(ParleyError) as err:
            await c.send_message(conv.id, "hi", mood="great")
        assert err.value.code is ErrorCode.VALIDATION_ERROR
        assert (err.value.details or {}).get("field") == "mood"
        with pytest.raises(ParleyError) as err:
            await c.request("no:such-event", {})
        assert err.value.code is ErrorCode.UNKNOWN_EVENT


async def test_bad_token_is_unauthorized(stack: Stack) -> None:
    client = ParleyClient(stack.gateway_url(0), "not-a-jwt")
    with pytest.raises(ParleyError) as err:
        await client.connect()
    assert err.value.code is ErrorCode.UNAUTHORIZED


async def test_send_is_idempotent_by_client_message_id(stack: Stack) -> None:
    async with ParleyClient(stack.gateway_url(0), token(uid("dave"))) as d:
        conv = await d.create_conversation(title="once")
        await d.join(conv.id, since_seq=0)
        seen = d.record()
        first = await d.send_message(conv.id, "only once", client_message_id="cm-fixed-1")
        again = await d.send_message(conv.id, "only once", client_message_id="cm-fixed-1")
        assert again.id == first.id and again.seq == first.seq
        await d.send_message(conv.id, "marker")
        await seen.wait_for(lambda f: is_new(f) and f.data.content == "marker", 10)
        stored = [f for f in seen.events(Event.MESSAGE_NEW) if f.data.content == "only once"]
        assert len(stored) == 1
        page, _ = await d.messages(conv.id)
        assert [m.content for m in page].count("only once") == 1


async def test_resume_is_exact_after_a_drop(stack: Stack) -> None:
    erin, frank = uid("erin"), uid("frank")
    async with (
        ParleyClient([stack.gateway_url(0), stack.gateway_url(1)], token(erin)) as e,
        ParleyClient(stack.gateway_url(1), token(frank)) as f,
    ):
        conv = await e.create_conversation(title="resume", participants=[frank])
        await e.join(conv.id, since_seq=0)
        seen = e.record()
        session = e.session_id
        for i in range(3):
            await f.send_message(conv.id, f"before {i}")
        await seen.wait_for(lambda fr: is_new(fr) and fr.data.content == "before 2", 10)
        await e.drop()
        # While erin is away (reconnecting), frank goes on.
        for i in range(5):
            await f.send_message(conv.id, f"during {i}")
        back = await seen.wait_for(lambda fr: fr.event == Event.RECONNECTED, 20)
        assert isinstance(back.data, ConnectedData) and back.data.session_id == session
        await seen.wait_for(lambda fr: is_new(fr) and fr.data.content == "during 4", 20)
        await f.send_message(conv.id, "after")
        await seen.wait_for(lambda fr: is_new(fr) and fr.data.content == "after", 10)
        contents = [fr.data.content for fr in seen.events(Event.MESSAGE_NEW, conv.id)]
        assert contents == [f"before {i}" for i in range(3)] + [f"during {i}" for i in range(5)] + [
            "after"
        ]
        seqs = [fr.seq or 0 for fr in seen.events(Event.MESSAGE_NEW, conv.id)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert e.reconnects == 1 and e.session_id == session


async def test_connects_to_the_next_gateway_of_the_list(stack: Stack) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with ParleyClient([dead, stack.gateway_url(1)], token(uid("gina"))) as g:
        assert g.current_url == stack.gateway_url(1)
        conv = await g.create_conversation(title="fallback")
        assert conv.id


async def test_send_waits_for_the_reconnect_instead_of_failing(stack: Stack) -> None:
    async with ParleyClient(stack.gateway_url(0), token(uid("hal"))) as h:
        conv = await h.create_conversation(title="queued")
        await h.drop()
        # Sent while the socket is down: queued, sent after the resume, stored once.
        sent = await asyncio.wait_for(h.send_message(conv.id, "while away"), 20)
        assert sent.content == "while away"
        page, _ = await h.messages(conv.id)
        assert [m.content for m in page] == ["while away"]


async def test_read_cursor_and_any_command_typed(stack: Stack) -> None:
    ivy, jay = uid("ivy"), uid("jay")
    async with (
        ParleyClient(stack.gateway_url(0), token(ivy)) as i,
        ParleyClient(stack.gateway_url(1), token(jay)) as j,
    ):
        conv = await i.create_conversation(title="reads", participants=[jay])
        sent = [await i.send_message(conv.id, f"m{n}") for n in range(3)]
        first = await j.mark_read(conv.id, sent[0].seq or 0)
        assert first.conversation_id == conv.id and first.seq == sent[0].seq
        assert first.unread_count == 2
        edited = await i.command(
            Event.MESSAGE_EDIT, conversation_id=conv.id, message_id=sent[1].id, content="m1!"
        )
        assert isinstance(edited, Message) and edited.content == "m1!"
