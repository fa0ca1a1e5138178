"""What websockets keeps per connection that an idle Parley connection does not need.

An idle gateway connection is mostly websockets' own state; at 10k connections every
hundred bytes is a megabyte. :func:`slim_after_handshake` runs once per connection, when the
handler starts (the opening handshake is over, the connection is OPEN), and drops:

- the parsed upgrade request (``Request`` with its ``Headers``: the JWT, cookies, user
  agent..., ~3 KB). ``ws.request`` is not the only reference: websockets'
  ``ServerProtocol.parse`` generator keeps the request in a local variable for the whole life
  of the connection (it parses the request, then ``yield from`` the frame loop). The parser
  is replaced by a fresh frame loop (``Protocol.parse``, the very generator the handshake
  parser delegates to) when the old one is provably between two frames (suspended in
  ``StreamReader.at_eof``, no byte of a frame consumed); otherwise it is left alone;
- the handshake's response and its ``request_rcvd`` future;
- the per-connection ``LoggerAdapter`` (with its dict and weakref proxy): the server's logger
  is used directly (log lines lose only the ``websocket`` extra);
- two ``collections.deque`` that are empty nearly all the time (~640 bytes each, even
  empty): the queue of incoming frames becomes a :class:`LazyDeque` (a deque only while
  frames wait), the waiters of ``drain()`` a plain list (websockets appends, removes and
  iterates; the gateway never calls ``drain()`` outside the closing handshake).

This relies on websockets internals (pinned by uv.lock; ``tests/test_slim.py`` checks each
assumption, and every gateway test runs through it). Each step checks what it expects and
skips itself otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

logger = logging.getLogger(__name__)

# websockets only checks that ``request`` is set once the handshake is over.
SLIM_REQUEST = Request("/ws", Headers())


_FRAME_LOOP = Protocol.parse.__code__
_HANDSHAKE_PARSER = ServerProtocol.parse.__code__
_AT_EOF = StreamReader.at_eof.__code__


def _code(gen: Any) -> Any:
    return getattr(gen, "gi_code", None)


def _between_frames(parser: Any) -> bool:
    """Whether the handshake parser is suspended between two frames (nothing consumed).

    ``ServerProtocol.parse`` → ``yield from Protocol.parse`` → ``yield from
    StreamReader.at_eof`` (which waits for the first byte of the next frame).
    """
    if _code(parser) is not _HANDSHAKE_PARSER:
        return False
    inner = getattr(parser, "gi_yieldfrom", None)
    if _code(inner) is not _FRAME_LOOP:
        return False
    return _code(getattr(inner, "gi_yieldfrom", None)) is _AT_EOF


def restart_parser(protocol: Protocol) -> bool:
    """Replace the handshake parser (which holds the request) by a bare frame loop."""
    old = protocol.parser
    if protocol.state is not State.OPEN or protocol.reader.eof or not _between_frames(old):
        return False
    parser = Protocol.parse(protocol)
    next(parser)  # runs until it waits for the next frame (the buffer is empty)
    protocol.parser = parser
    old.close()  # GeneratorExit in at_eof: no state change (parse catches Exception only)
    return True


class LazyDeque:
    """The part of ``collections.deque`` websockets' frame queue uses, allocated on demand.

    An empty deque is ~640 bytes; websockets keeps one per connection for incoming frames
    that is empty nearly all the time. This holds a deque only while frames are queued.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items: deque[Any] | None = deque(items) or None

    def __len__(self) -> int:
        items = self._items
        return 0 if items is None else len(items)

    def __bool__(self) -> bool:
        return self._items is not None

    def append(self, item: Any) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)

    def popleft(self) -> Any:
        items = self._items
        if items is None:
            raise IndexError("pop from an empty deque")
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def extendleft(self, items: Iterable[Any]) -> None:
        current = self._items
        if current is None:
            current = self._items = deque()
        current.extendleft(items)
        if not current:
            self._items = None


_done: asyncio.Future[Any] | None = None


def done_future() -> asyncio.Future[Any]:
    """A completed future of the running loop, shared by every connection.

    Stands in where websockets wants a future per connection that is already resolved or
    that nobody awaits: ``request_rcvd`` after the handshake, and the pong waiter of the
    gateway's heartbeat pings (``Conn.send_ping``), which websockets never resolves or
    cancels once done.
    """
    global _done  # noqa: PLW0603 - one per event loop, created on first use
    loop = asyncio.get_running_loop()
    if _done is None or _done.get_loop() is not loop:
        _done = loop.create_future()
        _done.set_result(None)
    return _done


def slim_after_handshake(ws: ServerConnection) -> None:
    """Drop the handshake's leftovers from an OPEN connection (see the module docstring)."""
    ws.request = SLIM_REQUEST
    ws.response = None
    if getattr(ws, "request_rcvd", None) is not None and ws.request_rcvd.done():
        ws.request_rcvd = done_future()
    if not restart_parser(ws.protocol):
        logger.debug("websocket parser of %s left as is", ws.id)
    adapter = ws.logger
    if isinstance(adapter, logging.LoggerAdapter) and isinstance(adapter.logger, logging.Logger):
        ws.logger = ws.protocol.logger = adapter.logger
    frames = getattr(getattr(ws, "recv_messages", None), "frames", None)
    if isinstance(getattr(frames, "queue", None), deque):
        assert frames is not None
        frames.queue = LazyDeque(frames.queue)
    if isinstance(getattr(ws, "drain_waiters", None), deque):
        ws.drain_waiters = list(ws.drain_waiters)  # type: ignore[assignment]
