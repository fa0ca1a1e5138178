"""natsdirect: subscriptions without a task, commands written now, a hook after each read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from parley_devstack.servers import NatsServer
from parley_gateway.natsdirect import (
    after_each_read,
    new_subscription,
    pub_command,
    subscribe_direct,
    subscribe_later,
    write_now,
)


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


async def test_pub_command_is_the_bytes_nats_py_sends(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    try:
        real = nc._send_command
        nc._send_command = capture  # type: ignore[method-assign]
        cases: list[tuple[str, bytes, dict[str, str] | None]] = [
            ("p.a", b"plain", None),
            ("p.b", b"", {"Parley-Origin": "ses_1"}),
            ("p.c", b'{"x":1}', {" K ": " v\r\nPUB evil 0\r\n ", "": "dropped"}),
        ]
        for subject, payload, headers in cases:
            await nc.publish(subject, payload, headers=headers)
            assert pub_command(nc, subject, payload, headers) == sent[-1]
        for bad_subject in ("p.x y", "p.x\r\nPUB evil 0"):
            with pytest.raises(nats.errors.BadSubjectError):
                pub_command(nc, bad_subject, b"", None)
        with pytest.raises(nats.errors.BadHeaderError):
            pub_command(nc, "p.a", b"", {"bad key": "v"})
        with pytest.raises(nats.errors.MaxPayloadError):
            pub_command(nc, "p.a", b"x" * (nc.max_payload + 1), None)
        nc._send_command = real  # type: ignore[method-assign]
    finally:
        await nc.close()


async def test_write_now_keeps_order_behind_what_the_client_queued(
    nats_server: NatsServer,
) -> None:
    """Written at once when nothing waits in the client; behind a queued command (a request
    in its flusher's queue) it refuses, so the caller's batch goes through the same queue."""
    nc = await nats.connect(nats_server.url)
    got: list[bytes] = []
    try:
        await nc.subscribe("p.order", cb=_append_to(got))
        await nc.flush()
        assert write_now(nc, lambda: [pub_command(nc, "p.order", b"1", None)])
        await nc._send_command(pub_command(nc, "p.order", b"2", None))  # queued, not flushed
        built: list[int] = []

        def build() -> list[bytes]:
            built.append(1)
            return []

        assert not write_now(nc, build)
        assert built == []  # not even built
        await nc.publish("p.order", b"3")  # the caller's fallback: behind "2"
        await nc.flush()
        for _ in range(50):
            if len(got) == 3:
                break
            await asyncio.sleep(0.02)
        assert got == [b"1", b"2", b"3"]
    finally:
        await nc.close()


async def test_after_each_read_runs_once_the_chunk_s_messages_are_handled(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    seen: list[str] = []
    try:
        assert after_each_read(nc, lambda: seen.append("after"))
        sub = await subscribe_direct(nc, "p.read", lambda msg: seen.append(msg.data.decode()))
        seen.clear()
        await nc.publish("p.read", b"m")
        await nc.flush()
        for _ in range(50):
            if "m" in seen:
                break
            await asyncio.sleep(0.02)
        at = seen.index("m")
        assert "after" in seen[at + 1 :]  # the hook follows the message it read
        await sub.unsubscribe()
    finally:
        await nc.close()


def _append_to(out: list[bytes]) -> Callable[[Msg], Awaitable[None]]:
    async def cb(msg: Msg) -> None:
        out.append(msg.data)

    return cb
