"""The opening handshake's timer, as ``process_request`` sees it (front.py, wsopen.py).

The front bounds a WebSocket handshake (``front.OPEN_TIMEOUT_SECONDS``, after the head was
read) so that a connection cannot sit half-open. In a reconnect storm a resume's handshake
mostly waits for the server: thousands of resumes queue for a session-read slot
(``sessions.LOAD_CONCURRENCY``), and under load that queue alone took longer than the open
timeout: the front aborted 1,582-2,062 of 10,000 queued resumes (issue 16,
docs/benchmarks.md "Reconnect storm"), whose clients then connected again, adding work.

:func:`paused` stops the open timer while the handshake waits in such a queue (the time it
waited is not the client's) and puts it back with what was left once it leaves; the queue
has a bound of its own, so the whole handshake stays bounded (a waiting resume holds no
slot: it only waits for its turn). The handshake's task sets :data:`OPEN_CLOCK`: a
:class:`TimerClock` (the lean connection's timer, :func:`start`) or a :class:`TimeoutClock`
(websockets' connection under ``asyncio.timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Protocol

# After a pause the handshake has at least this long left (the rest of it is short).
MIN_LEFT_SECONDS = 1.0


class Clock(Protocol):
    def pause(self) -> None: ...

    def resume(self) -> None: ...


# The running handshake's open timer; None outside a handshake (Socket.IO's CONNECT packet,
# tests calling process_request directly).
OPEN_CLOCK: ContextVar[Clock | None] = ContextVar("parley_open_clock", default=None)


class TimerClock:
    """Calls ``expire`` after ``seconds`` unless cancelled; pausable."""

    __slots__ = ("_expire", "_handle", "_left", "_loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, expire: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._expire = expire
        self._handle: asyncio.TimerHandle | None = loop.call_later(seconds, expire)
        self._left: float | None = None

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._left = None

    def pause(self) -> None:
        handle = self._handle
        if handle is None:
            return
        self._left = handle.when() - self._loop.time()
        handle.cancel()
        self._handle = None

    def resume(self) -> None:
        if self._left is not None:
            self._handle = self._loop.call_later(max(self._left, MIN_LEFT_SECONDS), self._expire)
            self._left = None


class TimeoutClock:
    """An ``asyncio.timeout`` in force, pausable."""

    __slots__ = ("_left", "_timeout")

    def __init__(self, timeout: asyncio.Timeout) -> None:
        self._timeout = timeout
        self._left: float | None = None

    def pause(self) -> None:
        when = self._timeout.when()
        if when is None or self._timeout.expired():
            return
        self._left = when - asyncio.get_running_loop().time()
        self._timeout.reschedule(None)

    def resume(self) -> None:
        if self._left is not None and not self._timeout.expired():
            loop = asyncio.get_running_loop()
            self._timeout.reschedule(loop.time() + max(self._left, MIN_LEFT_SECONDS))
        self._left = None


def start(
    loop: asyncio.AbstractEventLoop, seconds: float, expire: Callable[[], None]
) -> TimerClock:
    """The open timer of the handshake running in the current task (``cancel()`` it once
    the handshake is over)."""
    clock = TimerClock(loop, seconds, expire)
    OPEN_CLOCK.set(clock)
    return clock


@contextlib.asynccontextmanager
async def paused() -> AsyncIterator[None]:
    """Within this block the handshake's open timer does not run; it goes on afterwards
    with the time it had left (at least ``MIN_LEFT_SECONDS``)."""
    clock = OPEN_CLOCK.get()
    if clock is None:
        yield
        return
    clock.pause()
    try:
        yield
    finally:
        clock.resume()
