"""A lean server-side WebSocket connection (RFC 6455) for the front's common path.

websockets' ``ServerConnection`` is a Sans-I/O ``ServerProtocol`` (a generator parser, a
``StreamReader``, a logger lookup) under an asyncio connection (a message ``Assembler`` with
its queue and futures, drain waiters, a lost-connection future), about a fifth of a
connect's CPU on the gateway and much of an idle connection's memory. For an upgrade that
passed the plain checks (``wshead.plain_key``) the front uses this one object instead: one
``asyncio.Protocol`` with ``__slots__`` that frames, unmasks (websockets' C ``apply_mask``)
and answers by itself.

It keeps websockets' behaviour where a client can see it:

- frames: client frames must be masked, reserved bits 0, known opcodes, control frames
  unfragmented and <= 125 bytes (else 1002, websockets' reasons); a message (its fragments
  summed) larger than ``max_size`` fails with 1009 as soon as its header says so; a text
  message must be UTF-8 (else 1007); a continuation without a message or a new message
  inside a fragmented one: 1002;
- ping: answered with a pong of the same data; pong: acknowledges the pings up to it
  (``pending_pings``, as websockets does: the gateway's heartbeat reads it);
- close: a client's close frame is echoed (its code, or 1005 for none), then the server
  ends the TCP connection (half-close, as websockets does: the client still reads the close
  frame) and discards further data; an invalid code or a 1-byte payload is a 1002;
  :meth:`close` sends the server's code and waits for the client's close up to
  ``close_timeout``, then aborts;
- failing the connection (any of the errors above): the close frame with the code, then a
  half-close, and the connection is aborted after ``close_timeout`` if the client never
  closes;
- incoming messages wait in a queue of at most ``max_queue`` (reading pauses beyond it);
  bytes before the 101 are kept (reading pauses beyond ``max_size``) and parsed once open;
- :meth:`recv` raises websockets' ``ConnectionClosedOK``/``ConnectionClosedError`` once the
  queued messages are read and the connection is closing or closed.

The surface the gateway uses is websockets' (``Conn`` and the Socket.IO endpoint take
either): ``protocol`` (itself), ``state``, ``writes``, ``data_to_send``, ``send_text``,
``send_close``, ``send_ping``, ``send_data``, ``pending_pings``, ``transport``, ``loop``,
``recv``, ``send``, ``close``. No keepalive of its own: the gateway's heartbeat pings.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)
from websockets.frames import OK_CLOSE_CODES, Close, CloseCode
from websockets.protocol import State

from parley_gateway.wsframes import (
    _OP_BINARY,
    _OP_PING,
    _OP_TEXT,
    SEND_LIMIT,
    TOO_SLOW,
    IncomingFrames,
    server_frame,
)

logger = logging.getLogger(__name__)

OPEN = State.OPEN
CLOSING = State.CLOSING
CLOSED = State.CLOSED
CONNECTING = State.CONNECTING


class BoundedServerConnection(ServerConnection):
    """websockets' connection (the upgrades the lean one does not take) with the same bound:
    websockets answers every ping from ``data_received`` whether or not the client reads."""

    send_limit = SEND_LIMIT

    def data_received(self, data: bytes) -> None:
        if self.protocol.state is OPEN and self.transport.get_write_buffer_size() > self.send_limit:
            self.protocol.fail(CloseCode.TRY_AGAIN_LATER, TOO_SLOW)  # then input is discarded
            # websockets waits for the client to end TCP, which a flooding client does not.
            self.loop.call_later(self.close_timeout or 0, self.transport.abort)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # the protocol reads its EOF: CLOSED, its parser done
        # The parser is a generator suspended on a last ``yield`` that holds the protocol (a
        # reference cycle): closed here, the protocol is freed with the connection, not by
        # the cyclic GC. Nothing steps it after EOF (websockets' receive_* check the reader).
        self.protocol.parser.close()


class LeanConnection(IncomingFrames, asyncio.Protocol):
    """One WebSocket connection, server side, opened by the front (see the module doc)."""

    __slots__ = ()  # all in IncomingFrames.__slots__

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        max_size: int | None,
        max_queue: int | None,
        close_timeout: float,
        send_limit: int = SEND_LIMIT,
    ) -> None:
        self.transport = transport
        self.send_limit = send_limit
        self.loop = asyncio.get_running_loop()
        self.state = CONNECTING
        self.writes: list[bytes] = []
        self.pending_pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self.max_size = max_size
        self.max_queue = max_queue
        self.close_timeout = close_timeout
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self.close_rcvd_then_sent: bool | None = None
        self._buf = bytearray()  # bytes not parsed yet (an incomplete frame)
        self._need = 2  # bytes the next frame needs before it can be parsed
        self._discard = False  # after a close frame or a failure: input dropped
        self._frag_op = -1  # opcode of the fragmented message being received, or -1
        self._frags: list[bytes] | None = None
        self._frag_size = 0
        self._messages: deque[str | bytes] | None = None  # only while messages wait
        self._waiter: asyncio.Future[None] | None = None  # recv() waiting
        self._lost: asyncio.Future[None] | None = None  # close() waiting
        self._paused = False  # reading paused (queue full, or bytes before the 101)

    # Set by the routes' process_request for their handler (server.py, sio/endpoint.py).
    parley_auth: Any
    parley_sio: Any

    def __repr__(self) -> str:
        return f"LeanConnection({self.state.name})"

    @property
    def protocol(self) -> LeanConnection:
        """websockets' ``connection.protocol``: the same object here."""
        return self

    # ------------------------------------------------------------------ opening

    def accept(self, response: bytes) -> None:
        """The 101 (``response``, the whole head) goes first in the outgoing list, written
        with the handler's first frames (:meth:`send_data`); frames received before it are
        parsed now."""
        self.writes.insert(0, response)
        self.state = OPEN
        if self._paused:
            self._resume()
        if self._buf:
            self._parse()

    # ------------------------------------------------------------------ asyncio callbacks

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return
        buf = self._buf
        buf += data
        if self.state is CONNECTING:  # before the 101: kept (and bounded) until accept()
            if len(buf) > (self.max_size or 65536) + 14 and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        if len(buf) >= self._need:
            self._parse()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost ends the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self._discard = True
        self._buf = bytearray()
        self._frags = None
        self.pending_pings.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        lost = self._lost
        if lost is not None and not lost.done():
            lost.set_result(None)

    # ------------------------------------------------------------------ websockets' surface

    def data_to_send(self) -> list[bytes]:
        writes, self.writes = self.writes, []
        return writes

    def send_data(self) -> None:
        """Write what is queued, in one socket write."""
        writes = self.writes
        if not writes:
            return
        self.writes = []
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(writes[0] if len(writes) == 1 else b"".join(writes))

    def send_text(self, data: bytes, fin: bool = True) -> None:
        self._queue(_OP_TEXT, data)

    def send_ping(self, data: bytes) -> None:
        self._queue(_OP_PING, data)

    def _queue(self, opcode: int, payload: bytes) -> None:
        """Queue one frame for :meth:`send_data`; ``ConnectionClosed`` unless OPEN."""
        if self.state is not OPEN:
            raise self._closed_exc()
        self.writes.append(server_frame(opcode, payload))

    async def send(self, message: str | bytes) -> None:
        """One text (str) or binary (bytes) message, written now."""
        if isinstance(message, str):
            self._queue(_OP_TEXT, message.encode())
        else:
            self._queue(_OP_BINARY, bytes(message))
        self.send_data()

    async def recv(self) -> str | bytes:
        """The next message (text: str, binary: bytes); ``ConnectionClosed`` at the end."""
        while True:
            messages = self._messages
            if messages:
                message = messages.popleft()
                if not messages:
                    self._messages = None
                    if self._paused and self.state is OPEN and not self._discard:
                        self._resume()
                return message
            if self._discard or self.state is CLOSED:
                raise self._closed_exc()
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        """The messages until the connection closes (normally: the iteration ends)."""
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (when OPEN) and wait until the TCP connection is
        closed: by the client's close frame, or aborted after ``close_timeout``."""
        if self.state is CONNECTING:
            self.transport.abort()
            return
        if self.state is OPEN:
            self.send_close(code, reason)
            self.send_data()
        if self.state is CLOSED:
            return
        lost = self._lost
        if lost is None:
            lost = self._lost = self.loop.create_future()
        timer = self.loop.call_later(self.close_timeout, self.transport.abort)
        try:
            await asyncio.shield(lost)
        finally:
            timer.cancel()

    def _closed_exc(self) -> ConnectionClosed:
        rcvd, sent = self.close_rcvd, self.close_sent
        if (
            rcvd is not None
            and sent is not None
            and rcvd.code in OK_CLOSE_CODES
            and sent.code in OK_CLOSE_CODES
        ):
            return ConnectionClosedOK(rcvd, sent, self.close_rcvd_then_sent)
        return ConnectionClosedError(rcvd, sent, self.close_rcvd_then_sent)


# A gateway WebSocket: the lean one, or websockets' own for any other upgrade (front.py).
WebSocket = ServerConnection | LeanConnection


def as_any(connection: LeanConnection) -> Any:
    """For websockets' ``Server`` sets, which are typed for its own connections."""
    return cast(Any, connection)
