"""Ways to receive the client's frames: a stream to iterate, or a recorder to search."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from parley_client.frames import Frame

Predicate = Callable[[Frame], bool]


class Stream:
    """Every frame from now on, in arrival order (``async for frame in stream``). Unbounded:
    consume it, or close it."""

    def __init__(self, on_close: Callable[[Stream], None]) -> None:
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._on_close = on_close
        self.closed = False

    def put(self, frame: Frame) -> None:
        if not self.closed:
            self._queue.put_nowait(frame)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)
            self._on_close(self)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Frame:
        frame = await self._queue.get()
        if frame is None:
            raise StopAsyncIteration
        return frame

    async def next(self, timeout: float = 30.0) -> Frame:  # noqa: ASYNC109
        """The next frame; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()


class Recorder:
    """Every frame from now on, kept: look back at them, or wait for one (tests, scripts)."""

    def __init__(self, on_close: Callable[[Recorder], None]) -> None:
        self.frames: list[Frame] = []
        self._changed = asyncio.Event()
        self._on_close = on_close

    def put(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._changed.set()

    def close(self) -> None:
        self._on_close(self)

    def events(self, name: str, conversation_id: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.frames
            if f.event == name and (conversation_id is None or f.conversation_id == conversation_id)
        ]

    async def wait_for(self, pred: Predicate, timeout: float = 30.0) -> Frame:  # noqa: ASYNC109
        """The first frame (kept or still to come) that ``pred`` accepts."""
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.frames[seen:]:
                    if pred(frame):
                        return frame
                seen = len(self.frames)
                self._changed.clear()
                await self._changed.wait()
