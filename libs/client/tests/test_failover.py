"""A gateway dies under a client (kill -9): the client resumes on the next gateway of its
list, exactly — every message sent meanwhile once, in seq order, none twice. This module has
a stack of its own (the fixture is per module): it kills one of its gateways."""

from __future__ import annotations

import uuid

from parley_client import Event, Frame, ParleyClient
from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.stack import Stack


def _token(sub: str) -> str:
    return mint_token(sub, PrincipalKind.USER, name=sub.title())


def _is_new(frame: Frame) -> bool:
    return frame.event == Event.MESSAGE_NEW


async def test_resumes_exactly_on_the_next_gateway_after_a_kill(stack: Stack) -> None:
    mia, ned = f"mia-{uuid.uuid4().hex[:6]}", f"ned-{uuid.uuid4().hex[:6]}"
    urls = [stack.gateway_url(0), stack.gateway_url(1)]
    async with (
        ParleyClient(urls, _token(mia)) as m,
        ParleyClient(stack.gateway_url(1), _token(ned)) as n,
    ):
        assert m.current_url == urls[0]
        conv = await m.create_conversation(title="failover", participants=[ned])
        await m.join(conv.id, since_seq=0)
        seen = m.record()
        for i in range(3):
            await n.send_message(conv.id, f"before {i}")
        await seen.wait_for(lambda f: _is_new(f) and f.data.content == "before 2", 15)

        stack.gateways[0].process.kill()  # SIGKILL: no drain, no session save at close
        for i in range(5):
            await n.send_message(conv.id, f"during {i}")
        back = await seen.wait_for(lambda f: f.event in (Event.RECONNECTED, Event.CONNECTED), 40)
        # The session outlives its gateway (KV): resumed, not a new session.
        assert back.event == Event.RECONNECTED and m.reconnects == 1
        assert m.current_url == urls[1]
        await seen.wait_for(lambda f: _is_new(f) and f.data.content == "during 4", 30)
        await n.send_message(conv.id, "after")
        await seen.wait_for(lambda f: _is_new(f) and f.data.content == "after", 15)

        news = seen.events(Event.MESSAGE_NEW, conv.id)
        expected = [f"before {i}" for i in range(3)]
        expected += [f"during {i}" for i in range(5)] + ["after"]
        assert [f.data.content for f in news] == expected
        seqs = [f.seq or 0 for f in news]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # And the client can still write through the gateway it moved to.
        mine = await m.send_message(conv.id, "still here")
        assert mine.seq is not None and mine.seq > seqs[-1]
