"""A service's background tasks: the periodic loop, and one rule for ending them in ``stop()``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def cancellable(awaitable: Awaitable[T]) -> T:
    """``await awaitable``, then raise the current task's cancellation if it was requested
    meanwhile and ``awaitable`` swallowed it (returned, or raised something else, instead).

    Why: CPython 3.11's ``asyncio.wait_for`` returns the inner result when the cancellation
    lands in the loop iteration that completes the inner future (cpython gh-86296, bpo-42130;
    3.12 rewrote wait_for on asyncio.timeout, gh-96764). nats-py awaits every reply through
    it (nats-py 2.16.0, nats/aio/client.py ``Client._request_new_style``: ``return await
    asyncio.wait_for(future, timeout)``; also ``flush`` and ``KeyWatcher.updates``), so every
    request, KV and JetStream call can eat a cancel that comes with its reply. Seen for the
    partition leases' loop of a conversation replica behind test_start's slow link: stop()
    cancelled it while its watch's consumer request was being answered, and the loop slept
    on. ``Task.cancelling()`` still counts such a cancel (nothing called ``uncancel()``), so
    it is raised here; a cancel that was handled and uncancelled (asyncio.timeout) is not.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    try:
        result = await awaitable
    except Exception as exc:
        if task is not None and task.cancelling() > before:
            raise asyncio.CancelledError from exc
        raise
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


async def cancel_all(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    Unlike awaiting each under ``suppress(CancelledError)``, the caller's own cancellation
    still propagates; a task that had already failed is logged, not raised."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("task %s had failed", task.get_name(), exc_info=exc)


async def every(
    seconds: float,
    fn: Callable[[], Awaitable[object]],
    *,
    what: str,
    expected: tuple[type[Exception], ...] = (),
    log: logging.Logger = logger,
) -> None:
    """Await ``fn()`` every ``seconds`` (the first after one wait) until cancelled.

    A failure never ends the loop: an ``expected`` one (a dependency away) is a warning, any
    other is logged with its traceback; cancellation propagates, even one that a call inside
    ``fn`` swallowed (:func:`cancellable`): the loop then ends once that ``fn()`` returns."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await cancellable(fn())
        except asyncio.CancelledError:
            raise
        except expected as exc:
            log.warning("%s failed: %r", what, exc)
        except Exception:
            log.exception("%s failed", what)
