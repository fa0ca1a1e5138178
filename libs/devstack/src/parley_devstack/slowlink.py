"""A TCP proxy that holds some of a client's protocol lines back on their way to the server.

It stands for a server (or a link) slow to take in what a client sent: in tests, what is
usually a rare race under load becomes certain. The client's bytes keep their order (a line
held back holds back everything after it); the server's bytes pass at once.

    async with SlowLink(nats_server.host, nats_server.port, prefix=b"SUB ", delay=0.05) as link:
        nc = await nats.connect(link.url)   # every SUB reaches the server 50 ms late
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

logger = logging.getLogger(__name__)

LINE_LIMIT = 8 * 1024 * 1024  # the longest line (a message payload) passed on whole


class SlowLink:
    """Listens on a free port of 127.0.0.1; every client line starting with ``prefix`` is
    passed on ``delay`` seconds late (after the lines before it)."""

    def __init__(self, host: str, port: int, *, prefix: bytes, delay: float) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.delay = delay
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def __aenter__(self) -> SlowLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=LINE_LIMIT)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(
                self.host, self.port, limit=LINE_LIMIT
            )
        except OSError as exc:
            logger.warning("slow link: upstream %s:%d unreachable: %s", self.host, self.port, exc)
            client_w.close()
            return
        for pump in (self._up(client_r, server_w), self._down(server_r, client_w)):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to server, a whole line at a time, the chosen ones late."""
        try:
            while line := await reader.readuntil(b"\n"):
                if line.startswith(self.prefix):
                    await asyncio.sleep(self.delay)
                writer.write(line)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # the client went away (or sent a line past the reader's limit)
        finally:
            writer.close()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()
