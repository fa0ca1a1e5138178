"""Capped exponential backoff, and retrying an operation until it succeeds.

Unreachable dependencies are waited for, never a reason to exit (issue 19): a service
started during a NATS outage or without JetStream quorum keeps trying, reports not ready
meanwhile (its /readyz), and becomes ready by itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors

logger = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.2
MAX_DELAY_SECONDS = 5.0
# What waiting can fix: the server is unreachable, a request timed out, JetStream answered
# 503 (no quorum, no meta leader) or another NATS error (nats.js.errors.Error is one too).
TRANSIENT: tuple[type[BaseException], ...] = (OSError, TimeoutError, nats.errors.Error)


class Backoff:
    """Delays doubling from ``first`` up to ``cap`` seconds, with +-20 % jitter."""

    def __init__(self, first: float = FIRST_DELAY_SECONDS, cap: float = MAX_DELAY_SECONDS) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.first


async def retry(
    what: str,
    operation: Callable[[], Awaitable[T]],
    *,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
    backoff: Backoff | None = None,
) -> T:
    """``await operation()`` until it returns; transient failures are logged and retried
    with capped backoff (forever: cancel the caller to give up). Anything else is raised."""
    backoff = backoff or Backoff()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except transient as exc:
            delay = backoff.next()
            log = logger.warning if attempt <= 3 or attempt % 10 == 0 else logger.info
            log("%s failed (%r), attempt %d; retrying in %.1fs", what, exc, attempt, delay)
            await asyncio.sleep(delay)
