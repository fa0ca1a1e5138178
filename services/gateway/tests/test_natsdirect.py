"""natsdirect.subscribe_later: a direct subscription whose SUB the caller sends later."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from parley_devstack.servers import NatsServer
from parley_gateway.natsdirect import new_subscription, subscribe_later


def test_a_subject_that_would_inject_commands_is_refused() -> None:
    nc = NATS()
    for bad in ("p.x y", "p.x\r\nPUB evil 0\r\n", "", "p..x"):
        with pytest.raises(nats.errors.BadSubjectError):
            subscribe_later(nc, bad, lambda msg: None)
    assert nc._subs == {}


async def test_messages_arrive_once_the_sub_is_sent(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        got: list[bytes] = []
        sub, command = subscribe_later(nc, "parley.test.later", lambda msg: got.append(msg.data))
        assert command.startswith(b"SUB parley.test.later ")
        await nc._send_command(command)  # what Bus._publish_batch does
        await nc._flush_pending()
        await nc.flush()
        await nc.publish("parley.test.later", b"one")
        await nc.flush()
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.02)
        assert got == [b"one"]  # handled in place: no task, no queue
        await sub.unsubscribe()
        await nc.publish("parley.test.later", b"two")
        await nc.flush()
        await asyncio.sleep(0.1)
        assert got == [b"one"]
    finally:
        await nc.close()


def test_a_subscription_without_its_queue_is_nats_pys_otherwise() -> None:
    """new_subscription: every attribute nats-py's constructor sets, the same values, but
    the queue (and the next_msg calls) that the direct subscription replaces."""
    nc = NATS()
    ours = new_subscription(nc, 7, "p.x")
    theirs = Subscription(nc, 7, "p.x", pending_bytes_limit=0)
    expected = {k: v for k, v in vars(theirs).items() if k not in _REPLACED}
    assert {k: v for k, v in vars(ours).items() if k not in _REPLACED} == expected
    assert set(vars(theirs)) - set(vars(ours)) == _REPLACED
    assert ours.subject == "p.x" and ours._conn is nc and ours._id == 7
    other = new_subscription(nc, 8, "p.y")
    assert other._subject == "p.y" and ours._subject == "p.x"  # nothing shared


_REPLACED = {"_pending_queue", "_pending_next_msgs_calls"}
