"""The incoming side of :class:`~parley_gateway.wsconn.LeanConnection`: client frames
parsed, checked and answered as websockets does (see wsconn.py), and the server's close
frame (its own close, or failing the connection).
"""

from __future__ import annotations

import asyncio
from collections import deque

from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.frames import Close, CloseCode
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension is built for every platform we run
    from websockets.utils import apply_mask

OPEN = State.OPEN
CLOSING = State.CLOSING

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_OPCODES = frozenset((0, 1, 2, 8, 9, 10))
# Bytes a client may leave unread before it is failed with 1013, as Conn closes a slow client
# (the route's ``send_limit``: the gateway's sendQueueBytes). A ping is answered only below it.
SEND_LIMIT = 1 << 20
TOO_SLOW = "too slow: send queue full"


def server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, unfragmented frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 0x10000:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


class Failure(Exception):
    """A frame the connection must fail on: the close code and reason to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class IncomingFrames:
    """The frame parser, the close frame and the failing of a
    :class:`~parley_gateway.wsconn.LeanConnection` (the whole connection's slots are declared
    here)."""

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
        "loop",
        "max_queue",
        "max_size",
        "parley_auth",
        "parley_sio",
        "pending_pings",
        "send_limit",
        "state",
        "transport",
        "writes",
    )

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    state: State
    writes: list[bytes]
    pending_pings: dict[bytes, tuple[asyncio.Future[float], float]]
    max_size: int | None
    max_queue: int | None
    send_limit: int
    close_timeout: float
    close_rcvd: Close | None
    close_sent: Close | None
    close_rcvd_then_sent: bool | None
    _buf: bytearray
    _need: int
    _discard: bool
    _frag_op: int
    _frags: list[bytes] | None
    _frag_size: int
    _messages: deque[str | bytes] | None
    _waiter: asyncio.Future[None] | None
    _paused: bool

    def send_data(self) -> None:
        raise NotImplementedError

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
                    raise Failure(CloseCode.PROTOCOL_ERROR, "invalid opcode")
                if not b1 & 0x80:
                    raise Failure(CloseCode.PROTOCOL_ERROR, "incorrect masking")
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
                    raise Failure(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
                if opcode >= 8:
                    if length > 125:
                        raise Failure(CloseCode.PROTOCOL_ERROR, "control frame too long")
                    if not b0 & 0x80:
                        raise Failure(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
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
        except Failure as failure:
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
        fragmented = self._frag_op >= 0
        current = self._frag_size if fragmented else 0
        if length > max_size - current:
            exc = PayloadTooBig(length, max_size - current)
            if fragmented:  # "after reading 0 bytes" too, after an empty first fragment
                exc.set_current_size(current)
            raise Failure(CloseCode.MESSAGE_TOO_BIG, str(exc))

    def _data(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode == _OP_CONT:
            frags = self._frags
            if self._frag_op < 0 or frags is None:
                raise Failure(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
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
            raise Failure(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
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
                raise Failure(
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
                if self.transport.get_write_buffer_size() > self.send_limit:
                    # Pings from a client that reads nothing would grow the buffer without
                    # bound (websockets answers them all): closed as a slow client (Conn).
                    raise Failure(CloseCode.TRY_AGAIN_LATER, TOO_SLOW)
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
            raise Failure(CloseCode.PROTOCOL_ERROR, str(exc)) from None
        except UnicodeDecodeError as exc:
            raise Failure(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}") from None
        self.close_rcvd = close
        if self.state is CLOSING:
            self.close_rcvd_then_sent = False
        if self._frag_op >= 0:
            raise Failure(CloseCode.PROTOCOL_ERROR, "incomplete fragmented message")
        if self.state is OPEN:
            # Echo the data (an empty close frame stands for 1005, which cannot be sent).
            self.writes.append(server_frame(_OP_CLOSE, payload))
            self.close_sent = close
            self.close_rcvd_then_sent = True
            self.state = CLOSING
        self._end_input()

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

    def fail(self, code: int, reason: str = "") -> None:
        """websockets' ``Protocol.fail``: the close frame (when OPEN), then end the TCP
        connection without waiting for the client's close frame."""
        self.send_close(code, reason)
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
