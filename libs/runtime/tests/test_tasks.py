"""parley_runtime.tasks: the periodic loop survives failures; stopping ends every task."""

from __future__ import annotations

import asyncio
import logging

import pytest

from parley_runtime.tasks import cancel_all, every


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
