"""A lean server-side WebSocket connection (RFC 6455) for the front's common path.

websockets' ``ServerConnection`` is a Sans-I/O ``ServerProtocol`` (a generator parser, a
``StreamReader``, a logger lookup) under an asyncio connection (a message ``Assembler`` with
its queue and futures, drain waiters, a lost-connection future), about a fifth of a
connect's CPU on the gateway and much of an idle connection's memory. For an upgrade that
passed the plain checks (``wsopen.plain_key``) the front uses this one object instead: one
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
    PayloadTooBig,
    ProtocolError,
)
from websockets.frames import OK_CLOSE_CODES, Close, CloseCode
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension is built for every platform we run
    from websockets.utils import apply_mask

logger = logging.getLogger(__name__)

OPEN = State.OPEN
CLOSING = State.CLOSING
CLOSED = State.CLOSED
CONNECTING = State.CONNECTING

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_OPCODES = frozenset((0, 1, 2, 8, 9, 10))


def server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, unfragmented frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 0x10000:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


class _Failure(Exception):
    """A frame the connection must fail on: the close code and reason to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class LeanConnection(asyncio.Protocol):
    """One WebSocket connection, server side, opened by the front (see the module doc)."""

    __slots__ = (
        "_buf",
        "_discard",
        "_frag_op",
        "_frag_size",
        "_frags",
        "_lost",
        "_messages",
        "_need",
        "_paused",
        "_waiter",
        "close_rcvd",
        "close_rcvd_then_sent",
        "close_sent",
        "close_timeout",
        "handler_task",
        "loop",
        "max_queue",
        "max_size",
        "parley_auth",
        "parley_sio",
        "pending_pings",
        "state",
        "transport",
        "writes",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        max_size: int | None,
        max_queue: int | None,
        close_timeout: float,
    ) -> None:
        self.transport = transport
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
        self.handler_task: asyncio.Task[None] | None = None
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

    # ------------------------------------------------------------------ incoming frames

    def _parse(self) -> None:
        data = bytes(self._buf)
        pos = 0
        end = len(data)
        try:
            while not self._discard:
                if end - pos < 2:
                    self._need = 2
                    break
                b0 = data[pos]
                b1 = data[pos + 1]
                opcode = b0 & 0x0F
                if opcode not in _OPCODES:
                    raise _Failure(CloseCode.PROTOCOL_ERROR, "invalid opcode")
                if not b1 & 0x80:
                    raise _Failure(CloseCode.PROTOCOL_ERROR, "incorrect masking")
                length = b1 & 0x7F
                head = 6
                if length == 126:
                    head = 8
                    if end - pos < 4:
                        self._need = 4
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                elif length == 127:
                    head = 14
                    if end - pos < 10:
                        self._need = 10
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                # websockets' checks and reasons, all made before the payload is waited for
                self._check_size(length)
                if b0 & 0x70:
                    raise _Failure(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
                if opcode >= 8:
                    if length > 125:
                        raise _Failure(CloseCode.PROTOCOL_ERROR, "control frame too long")
                    if not b0 & 0x80:
                        raise _Failure(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
                if end - pos < head + length:
                    self._need = head + length
                    break
                start = pos + head
                payload = apply_mask(data[start : start + length], data[start - 4 : start])
                pos = start + length
                if opcode >= 8:
                    self._control(opcode, payload)
                else:
                    self._data(opcode, bool(b0 & 0x80), payload)
        except _Failure as failure:
            self.fail(failure.code, failure.reason)
            return
        if self._discard:
            return
        if pos == end:
            self._buf = bytearray()
            self._need = 2
        else:
            self._buf = bytearray(data[pos:])
        if self.writes:
            self.send_data()

    def _check_size(self, length: int) -> None:
        max_size = self.max_size
        if max_size is None:
            return
        current = self._frag_size if self._frag_op >= 0 else 0
        if length > max_size - current:
            exc = PayloadTooBig(length, max_size - current)
            if current:
                exc.set_current_size(current)
            raise _Failure(CloseCode.MESSAGE_TOO_BIG, str(exc))

    def _data(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode == _OP_CONT:
            frags = self._frags
            if self._frag_op < 0 or frags is None:
                raise _Failure(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
            frags.append(payload)
            self._frag_size += len(payload)
            if not fin:
                return
            opcode = self._frag_op
            payload = b"".join(frags)
            self._frag_op = -1
            self._frags = None
            self._frag_size = 0
        elif self._frag_op >= 0:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
        elif not fin:
            self._frag_op = opcode
            self._frags = [payload]
            self._frag_size = len(payload)
            return
        message: str | bytes
        if opcode == _OP_TEXT:
            try:
                message = payload.decode()
            except UnicodeDecodeError as exc:
                raise _Failure(
                    CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}"
                ) from None
        else:
            message = payload
        messages = self._messages
        if messages is None:
            messages = self._messages = deque()
        messages.append(message)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.max_queue is not None and len(messages) >= self.max_queue and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _OP_PING:
            if self.state is OPEN:
                self.writes.append(server_frame(_OP_PONG, payload))
        elif opcode == _OP_PONG:
            self._acknowledge(payload)
        else:
            self._close_frame(payload)

    def _acknowledge(self, data: bytes) -> None:
        """websockets' ``acknowledge_pings``: the ping of ``data`` and those before it."""
        pings = self.pending_pings
        if data not in pings:
            return
        now = self.loop.time()
        for ping_id in list(pings):
            waiter, sent = pings.pop(ping_id)
            if not waiter.done():
                waiter.set_result(now - sent)
            if ping_id == data:
                break

    def _close_frame(self, payload: bytes) -> None:
        try:
            close = Close.parse(payload)
        except ProtocolError as exc:
            raise _Failure(CloseCode.PROTOCOL_ERROR, str(exc)) from None
        except UnicodeDecodeError as exc:
            raise _Failure(
                CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}"
            ) from None
        self.close_rcvd = close
        if self.state is CLOSING:
            self.close_rcvd_then_sent = False
        if self._frag_op >= 0:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "incomplete fragmented message")
        if self.state is OPEN:
            # Echo the data (an empty close frame stands for 1005, which cannot be sent).
            self.writes.append(server_frame(_OP_CLOSE, payload))
            self.close_sent = close
            self.close_rcvd_then_sent = True
            self.state = CLOSING
        self._end_input()

    def fail(self, code: int, reason: str = "") -> None:
        """websockets' ``Protocol.fail``: the close frame (when OPEN), then end the TCP
        connection without waiting for the client's close frame."""
        if self.state is OPEN:
            close = Close(code, reason)
            self.writes.append(server_frame(_OP_CLOSE, close.serialize()))
            self.close_sent = close
            if self.close_rcvd is not None:
                self.close_rcvd_then_sent = True
            self.state = CLOSING
        self._end_input()

    def _end_input(self) -> None:
        """Discard further input, write what is queued, half-close; abort after
        ``close_timeout`` if the client does not close its side."""
        self._discard = True
        self._buf = bytearray()
        self._frags = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        transport = self.transport
        if transport.is_closing():
            return
        self.send_data()
        if self._paused:
            self._resume()
        try:
            if transport.can_write_eof():
                transport.write_eof()
            else:  # pragma: no cover - TCP transports can
                transport.close()
        except (OSError, RuntimeError):  # the socket is already gone
            transport.abort()
            return
        self.loop.call_later(self.close_timeout, transport.abort)

    def _resume(self) -> None:
        self._paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()

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
        if self.state is not OPEN:
            raise self._closed_exc()
        self.writes.append(server_frame(_OP_TEXT, data))

    def send_ping(self, data: bytes) -> None:
        if self.state is not OPEN:
            raise self._closed_exc()
        self.writes.append(server_frame(_OP_PING, data))

    def send_close(self, code: int | None = None, reason: str = "") -> None:
        """Queue the server's close frame (the closing handshake starts: CLOSING)."""
        if self.state is not OPEN:
            return
        close = Close(code, reason) if code is not None else None
        self.writes.append(server_frame(_OP_CLOSE, close.serialize() if close else b""))
        self.close_sent = close or Close(CloseCode.NO_STATUS_RCVD, "")
        if self.close_rcvd is not None:
            self.close_rcvd_then_sent = True
        self.state = CLOSING

    async def send(self, message: str | bytes) -> None:
        """One text (str) or binary (bytes) message, written now."""
        if self.state is not OPEN:
            raise self._closed_exc()
        if isinstance(message, str):
            self.writes.append(server_frame(_OP_TEXT, message.encode()))
        else:
            self.writes.append(server_frame(_OP_BINARY, bytes(message)))
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
