"""parley_runtime.tasks: the periodic loop survives failures; stopping ends every task, also
one blocked in a NATS request whose reply comes with the cancellation (nats-py on 3.11)."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from parley_runtime.tasks import cancel_all, cancellable, every

# CPython < 3.12: asyncio.wait_for returns the result of a future done in the iteration that
# cancels it (gh-86296); 3.12 raises the cancellation.
WAIT_FOR_SWALLOWS = sys.version_info < (3, 12)


class Away(Exception):
    """A dependency that is away (an expected failure)."""


async def test_every_goes_on_after_failures_and_stops_when_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    third = asyncio.Event()

    async def tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Away("store away")
        if len(calls) == 2:
            raise KeyError("a bug")
        third.set()

    caplog.set_level(logging.WARNING)
    task = asyncio.create_task(every(0, tick, what="the tick", expected=(Away,)))
    await third.wait()
    await cancel_all([task])
    assert task.cancelled() and len(calls) >= 3
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in warned] == ["the tick failed: Away('store away')"]
    assert [r.getMessage() for r in errors] == ["the tick failed"]
    assert errors[0].exc_info is not None  # the unexpected one keeps its traceback


async def test_cancel_all_logs_a_task_that_had_failed_and_keeps_the_callers_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise RuntimeError("had failed")

    failed = asyncio.create_task(broken(), name="broken")
    await asyncio.wait([failed])
    await cancel_all([failed])  # no raise: logged
    assert "task broken had failed" in caplog.text

    async def forever() -> None:
        await asyncio.Event().wait()

    inner = asyncio.create_task(forever())

    async def stopper() -> None:
        await cancel_all([inner])

    # A stop() that is itself cancelled while waiting is cancelled (not swallowed).
    gate = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            gate.set()
            await asyncio.Event().wait()  # slow to end

    lingering = asyncio.create_task(slow())
    await asyncio.sleep(0)
    outer = asyncio.create_task(cancel_all([lingering]))
    await gate.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    lingering.cancel()
    await asyncio.wait([lingering])
    await stopper()
    assert inner.cancelled()


async def test_cancellable_raises_the_cancellation_that_wait_for_swallowed() -> None:
    async def reply_with_the_cancel(wrap: bool) -> asyncio.Task[str]:
        reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiting = asyncio.wait_for(reply, timeout=10)
        task = asyncio.create_task(cancellable(waiting) if wrap else waiting)
        await asyncio.sleep(0)  # blocked in wait_for
        reply.set_result("reply")
        task.cancel()  # in the same iteration as the reply
        await asyncio.wait([task])
        return task

    plain = await reply_with_the_cancel(wrap=False)
    assert plain.cancelled() is not WAIT_FOR_SWALLOWS  # the upstream bug (see cancellable)
    assert (await reply_with_the_cancel(wrap=True)).cancelled()


async def test_a_loop_blocked_in_a_nats_request_ends_when_cancelled_with_its_reply(
    nc: Client,
) -> None:
    """A stop() that lands with the reply of the loop's request: one cancel ends the loop.
    Before, nats-py's request returned the reply and the loop went on (stop hung)."""
    loop_task: asyncio.Task[None] | None = None
    requests = 0

    async def tick() -> None:
        nonlocal requests
        requests += 1
        await nc.request("tasks-test.ask", b"?", timeout=5)

    async def answer(msg: Msg) -> None:
        # The reply future of the loop's request: cancel the loop as it completes.
        task = loop_task
        assert task is not None
        for reply in list(nc._resp_map.values()):
            reply.add_done_callback(lambda _: task.cancel())
        await msg.respond(b"here")

    await nc.subscribe("tasks-test.ask", cb=answer)
    await nc.flush()
    loop_task = asyncio.create_task(every(0, tick, what="the asking loop"))
    await asyncio.wait([loop_task], timeout=10)
    assert loop_task.cancelled(), f"the loop went on after a cancel ({requests} requests)"
    assert requests == 1
