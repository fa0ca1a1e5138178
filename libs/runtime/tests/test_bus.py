"""bus.flush: once it returns, the server holds the subscriptions made before it, so a
request from another connection finds them. The replica's link to NATS passes every SUB
50 ms late (parley_devstack.slowlink): what a loaded machine does now and then, always."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from parley_devstack.servers import NatsServer
from parley_devstack.slowlink import SlowLink
from parley_runtime import bus

SUBJECTS = [f"bus-test.{i}" for i in range(8)]


@pytest.fixture
async def slow_responder(nats_server: NatsServer) -> AsyncIterator[Client]:
    """Connected through a link that holds each SUB back 50 ms."""
    async with SlowLink(nats_server.host, nats_server.port, prefix=b"SUB ", delay=0.05) as link:
        nc = await nats.connect(link.url)
        try:
            yield nc
        finally:
            await nc.close()


async def _answer(msg: Msg) -> None:
    await msg.respond(b"here")


async def _subscribe_all(nc: Client, tag: str) -> None:
    for subject in SUBJECTS:
        await nc.subscribe(f"{subject}.{tag}", queue="q", cb=_answer)


async def test_after_bus_flush_a_request_finds_the_new_subscriptions(
    slow_responder: Client, nc: Client
) -> None:
    await _subscribe_all(slow_responder, "a")
    await bus.flush(slow_responder)
    reply = await nc.request(f"{SUBJECTS[-1]}.a", b"?", timeout=5)
    assert reply.data == b"here"


async def test_nats_py_flush_alone_can_return_before_the_server_has_them(
    slow_responder: Client, nc: Client
) -> None:
    """Why bus.flush exists: nats-py writes flush()'s PING ahead of its queued SUBs. If this
    fails after a nats-py upgrade, its flush waits for them now and bus.flush can be one
    plain flush."""
    await _subscribe_all(slow_responder, "b")
    await slow_responder.flush(5)
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(f"{SUBJECTS[-1]}.b", b"?", timeout=5)
