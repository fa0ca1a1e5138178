"""Ending a service's background tasks: one rule for every ``stop()``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
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
