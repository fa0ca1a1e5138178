"""A service's background tasks: the periodic loop, and one rule for ending them in ``stop()``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

logger = logging.getLogger(__name__)


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
    other is logged with its traceback; cancellation propagates."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except expected as exc:
            log.warning("%s failed: %r", what, exc)
        except Exception:
            log.exception("%s failed", what)
