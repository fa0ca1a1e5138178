"""One client connection: its identity, joined conversations and a non-blocking writer.

Kept small on purpose (``__slots__``, no task of its own): frames are written straight into the
socket's transport buffer; when that buffer holds more than the send-queue limit the client
is too slow and is closed with 1013 (it may resume), without slowing anyone else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from websockets.protocol import State

from parley_contract import jsonutil
from parley_contract.internal import Principal
from parley_gateway.ratelimit import TokenBucket
from parley_gateway.slim import done_future
from parley_gateway.wsconn import WebSocket

if TYPE_CHECKING:
    from parley_gateway.metrics import Metrics

logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013  # too slow
CLOSE_TOKEN_EXPIRED = 4401
CLOSE_HEARTBEAT = 4408
# Commands of one connection in flight at once (the reader stops reading beyond this).
MAX_IN_FLIGHT = 32

_background: set[asyncio.Task[None]] = set()
_FLUSH: list[Conn] = []  # connections with framed, unwritten data (flushed once per tick)


def frame_text(payload: bytes) -> bytes:
    """The WebSocket text frame of ``payload`` as this server sends it (RFC 6455 5.2).

    Server frames are unmasked and the gateway runs without extensions (compression off), so
    the frame of an event is the same bytes for every receiver: framed once per event, then
    handed to every member (``Conn.push_frame``). Same bytes as websockets'
    ``Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])``.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 0x10000:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def _flush_all() -> None:
    pending = _FLUSH[:]
    _FLUSH.clear()
    for conn in pending:
        conn.flush()


def flush_all() -> None:
    """Write what every connection has framed, now: called after each chunk the NATS client
    read (``natsdirect.after_each_read``), so the frames of its messages leave in the same
    loop step, one socket write per connection (the loop's own flush then finds nothing)."""
    if _FLUSH:
        _flush_all()


class Pipeline:
    """The commands of one connection in flight: several at once, in order per conversation.

    A command waits for the previous command of the same connection that names the same
    ``conversationId`` (commands without one form their own chain), so a client's
    ``message:send``s to one conversation are stored in the order it sent them, while
    commands to other conversations do not wait for them. One task per chain runs its
    commands in turn (``chains.run_chain``; the ``message:send``s queued behind one in
    flight go as one request). Created on the first command, dropped when nothing is in
    flight (idle connections do not pay for it); the server's command path
    (``Gateway.submit_frame``) runs it.
    """

    __slots__ = ("chains", "slots", "tasks")

    def __init__(self) -> None:
        # The commands of each chain not started yet (frame, arrival time), while its task runs.
        self.chains: dict[str | None, deque[tuple[dict[str, Any], float]]] = {}
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()


class Conn:
    __slots__ = (
        "_bucket",
        "busy",
        "closing",
        "exp",
        "joined",
        "kicked",
        "limit",
        "metrics",
        "ping_data",
        "pipe",
        "principal",
        "queued",
        "rate",
        "resumed",
        "session_id",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        principal: Principal,
        exp: float,
        session_id: str,
        *,
        rate: float,
        send_limit: int,
        metrics: Metrics,
    ) -> None:
        self.ws = ws
        self.principal = principal
        self.exp = exp
        self.session_id = session_id
        self.rate = rate
        self._bucket: TokenBucket | None = None  # made at the first command (full, as at connect)
        # conversationId → last durable seq delivered to this connection.
        self.joined: dict[str, int] = {}
        self.ping_data: bytes | None = None  # the last heartbeat ping sent
        self.limit = send_limit
        self.metrics = metrics
        self.closing = False
        self.kicked = False
        self.resumed = False
        self.busy = 0  # commands in flight (submitted, not yet answered)
        self.pipe: Pipeline | None = None  # while commands are in flight
        self.queued = False  # in _FLUSH

    def __repr__(self) -> str:
        return f"Conn({self.principal.kind.value}:{self.principal.id}, {self.session_id})"

    @property
    def bucket(self) -> TokenBucket:
        """The connection's command rate limit. A bucket starts full and refills to full while
        nothing is taken, so one made at the first command is the one made at connect."""
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(self.rate)
        return bucket

    def opened(self) -> None:
        """Registered, before the hello: a transport may announce the connection here."""

    @property
    def open(self) -> bool:
        return not self.closing and self.ws.protocol.state is State.OPEN

    def push(self, data: bytes) -> bool:
        """Write one text frame without waiting; close 1013 if the client cannot keep up."""
        return self.push_frame(frame_text(data))

    def push_frame(self, frame: bytes) -> bool:
        """Queue an already framed text frame (``frame_text``) for this client.

        The bytes go into websockets' own outgoing list (``protocol.writes``), the list that
        ``send_text`` appends to and ``data_to_send`` empties: pongs, pings and the close
        frame that websockets queues stay in order with the data, and its state machine
        (closing handshake) is untouched. The protocol keeps no byte count of what it sent.
        """
        ws = self.ws
        if self.closing or ws.protocol.state is not State.OPEN:
            self.metrics.drops.labels("closed").inc()
            return False
        transport = ws.transport
        if transport is not None and transport.get_write_buffer_size() > self.limit:
            # More than the limit is still waiting for this client: it cannot keep up.
            self.metrics.slow_consumers.inc()
            self.metrics.drops.labels("slow").inc()
            logger.info("closing slow client %r (1013)", self)
            self.close(CLOSE_TRY_AGAIN, "too slow: send queue full")
            return False
        ws.protocol.writes.append(frame)  # the protocol is OPEN: send_text would do this
        if not self.queued:
            # One socket write per connection per loop iteration, whatever the number of
            # frames (a burst of NATS messages read at once becomes one syscall per client).
            self.queued = True
            _FLUSH.append(self)
            if len(_FLUSH) == 1:
                asyncio.get_running_loop().call_soon(_flush_all)
        self.metrics.delivered += 1
        return True

    def flush(self) -> None:
        """Hand the frames framed since the last flush to the transport in one write."""
        self.queued = False
        ws = self.ws
        transport = ws.transport
        try:
            chunks = ws.protocol.data_to_send()
            if not chunks:
                return
            if all(chunks):
                transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                return
            # An empty chunk means "half-close": let websockets do it its way.
            for chunk in chunks:
                if chunk:
                    transport.write(chunk)
                elif transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
        except Exception:  # the transport may fail in many ways; the socket is gone
            logger.debug("flush failed on %r", self, exc_info=True)

    async def wait_writable(self, patience: float = 30.0) -> None:
        """Wait until at most half the send queue is used (replays must not trip 1013)."""
        if self.queued:
            self.flush()  # count what is framed but not yet written
        transport = self.ws.transport
        deadline = time.monotonic() + patience
        while (
            not self.closing
            and transport is not None
            and transport.get_write_buffer_size() > self.limit // 2
        ):
            if time.monotonic() > deadline:
                self.metrics.slow_consumers.inc()
                self.close(CLOSE_TRY_AGAIN, "too slow: send queue full")
                return
            await asyncio.sleep(0.005)

    def send(self, frame: dict[str, Any]) -> bool:
        return self.push(jsonutil.dumps(frame))

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake in the background (never blocks the caller)."""
        if self.closing:
            return
        self.closing = True
        self.metrics.closes.labels(str(code)).inc()
        ws = self.ws
        if code == CLOSE_TRY_AGAIN:
            # The buffer is full: the close frame would wait behind it. Queue it, then cut the
            # TCP connection after a short grace so the client sees 1013 if it ever reads.
            try:
                ws.protocol.send_close(code, reason)
                ws.send_data()
            except Exception:  # already failing
                logger.debug("close failed on %r", self, exc_info=True)
            loop = asyncio.get_running_loop()
            transport = ws.transport
            loop.call_later(5.0, transport.abort)
            return
        task = asyncio.get_running_loop().create_task(ws.close(code, reason))
        _background.add(task)
        task.add_done_callback(_background.discard)

    def send_ping(self) -> None:
        """Send a keepalive ping; close 4408 if the previous one got no pong in time.

        websockets removes a ping from ``pending_pings`` when its pong (or a later one)
        arrives, so the previous ping still being there means no pong. Its waiter is the
        shared completed future (``slim.done_future``): nothing awaits it, and no future is
        kept per connection.
        """
        ws = self.ws
        last = self.ping_data
        if last is not None and last in ws.pending_pings:
            self.close(CLOSE_HEARTBEAT, "heartbeat timeout")
            return
        if ws.protocol.state is not State.OPEN:
            return
        data = int(time.monotonic() * 1e6).to_bytes(8, "big")
        ws.pending_pings[data] = (done_future(), ws.loop.time())
        try:
            ws.protocol.send_ping(data)
            ws.send_data()
        except Exception:
            logger.debug("ping failed on %r", self, exc_info=True)
            return
        self.ping_data = data
