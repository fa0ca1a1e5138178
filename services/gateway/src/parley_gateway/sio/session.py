"""An Engine.IO session and the Socket.IO connection on it (a ``Conn`` with another transport).

``EioSession`` is the transport: until an upgrade, packets wait in a list for the client's
next long-poll GET; after it (or from the start, for a WebSocket-only client) they are framed
straight into the WebSocket like ``/ws`` frames. ``SioConn`` is the gateway's ``Conn`` with
its writes turned into Socket.IO packets, so the hub, the command path, the limits and the
backpressure of ``/ws`` apply unchanged.

Server events are built once per event for all Socket.IO receivers of this gateway
(``translate``: the hub hands every member the same framed bytes, which are remembered with
the packet made from them), like the ``/ws`` frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from websockets.protocol import State

from parley_contract import envelopes, jsonutil
from parley_contract.errors import ErrorCode
from parley_contract.ids import is_valid_id
from parley_contract.internal import Principal
from parley_gateway.conn import (
    CLOSE_POLICY,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN,
    Conn,
    frame_text,
)
from parley_gateway.sio import codec
from parley_gateway.wsconn import WebSocket

if TYPE_CHECKING:
    from parley_gateway.metrics import Metrics

logger = logging.getLogger(__name__)

_background: set[asyncio.Task[Any]] = set()


class Owner(Protocol):
    """The endpoint that keeps the sessions (told when one ends)."""

    def ended(self, eio: EioSession) -> None: ...


def spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def unframe(wire: bytes) -> memoryview:
    """The payload of a server text frame made by ``conn.frame_text``."""
    n = wire[1] & 0x7F
    return memoryview(wire)[2 if n < 126 else 4 if n == 126 else 10 :]


def offset_of(cid: str, seq: int, joined: dict[str, int] | None = None) -> str:
    """The recovery offset of a durable event (socket.io-client sends back the last one).

    ``<conversationId>:<seq>`` of the event, then ``,<conversationId>:<seq>`` for every other
    conversation of the connection (``joined``: the last seq delivered in each), so a
    recovery resumes every conversation exactly where the client is, also after a gateway
    crash (the session's saved seqs may lag by one flush interval)."""
    head = f"{cid}:{seq}"
    if not joined or (len(joined) == 1 and cid in joined):
        return head
    return ",".join([head, *(f"{c}:{s}" for c, s in joined.items() if c != cid)])


def parse_offset(offset: object, limit: int) -> dict[str, int] | None:
    """The conversations (cid → last seq) of an offset (``offset_of``); None if malformed or
    naming more than ``limit`` conversations."""
    if not isinstance(offset, str) or len(offset) > limit * 150:
        return None
    out: dict[str, int] = {}
    for part in offset.split(","):
        cid, _, seq = part.rpartition(":")
        if not is_valid_id(cid) or not seq.isdigit() or not seq.isascii() or len(seq) > 15:
            return None
        out.setdefault(cid, int(seq))
    return out if len(out) <= limit else None


class _Event:
    """A durable or ephemeral server event, parsed once: what its packets are made of."""

    __slots__ = ("cid", "event", "frame", "seq")

    def __init__(self, event: bytes, frame: bytes, cid: str | None, seq: int) -> None:
        self.event = event  # the event name, JSON
        self.frame = frame  # the /ws frame's payload
        self.cid = cid  # set for a durable event (it has an offset)
        self.seq = seq

    def packet(self, joined: dict[str, int] | None = None) -> bytes:
        offset = None
        if self.cid is not None:
            offset = jsonutil.dumps(offset_of(self.cid, self.seq, joined))
        return codec.event_packet(self.event, self.frame, offset)


def parse_event(frame: memoryview | bytes) -> _Event | None:
    try:
        doc = jsonutil.loads(frame)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("event"), str):
        return None
    seq, cid = doc.get("seq"), doc.get("conversationId")
    event, payload = jsonutil.dumps(doc["event"]), bytes(frame)
    if type(seq) is int and isinstance(cid, str):
        return _Event(event, payload, cid, seq)
    return _Event(event, payload, None, 0)


def packet_of(frame: memoryview | bytes, joined: dict[str, int] | None = None) -> bytes | None:
    """The Socket.IO event packet (``42[...]``) of a ``/ws`` event frame; None if malformed."""
    event = parse_event(frame)
    return None if event is None else event.packet(joined)


class _Translation:
    """The last event framed by the hub and its packet (one event, many receivers)."""

    __slots__ = ("event", "packet", "wire", "ws_frame")

    def __init__(self) -> None:
        self.wire: bytes | None = None
        self.event: _Event | None = None
        self.packet: bytes | None = None
        self.ws_frame: bytes | None = None

    def event_for(self, wire: bytes) -> _Event | None:
        if wire is not self.wire:
            self.wire = wire  # held: its identity cannot be reused while it is remembered
            self.event = parse_event(unframe(wire))
            self.packet = None if self.event is None else self.event.packet()
            self.ws_frame = None
        return self.event

    def packet_for(self, wire: bytes) -> bytes | None:
        self.event_for(wire)
        return self.packet

    def ws_frame_for(self, wire: bytes) -> bytes | None:
        packet = self.packet_for(wire)
        if packet is None:
            return None
        if self.ws_frame is None:
            self.ws_frame = frame_text(packet)
        return self.ws_frame


_LAST = _Translation()


class EioSession:
    """One Engine.IO session: its transport (long-polling or a WebSocket) and its Conn."""

    __slots__ = (
        "closed",
        "conn",
        "limit",
        "owner",
        "poll",
        "pong_due",
        "queue",
        "queued",
        "seen",
        "sid",
        "skip",
        "token",
        "upgrading",
        "ws",
    )

    def __init__(self, owner: Owner, sid: str, limit: int, token: str | None) -> None:
        self.owner = owner
        self.sid = sid
        self.ws: WebSocket | None = None  # set once on WebSocket
        self.queue: list[bytes] = []  # Engine.IO packets for the next poll
        self.queued = 0  # their bytes
        self.poll: asyncio.Future[None] | None = None  # a GET waiting for packets
        self.conn: SioConn | None = None
        self.upgrading = 0.0  # until then (a WebSocket probe came), polls answer at once
        self.token = token  # from the handshake's Authorization header or access_token
        self.limit = limit
        self.pong_due = False
        self.skip = 0  # binary attachments still to drop (binary packets are refused)
        self.closed = False
        self.seen = time.monotonic()  # last request (polling), for the sweep

    def __repr__(self) -> str:
        return f"EioSession({self.sid}, {'websocket' if self.ws else 'polling'})"

    # ------------------------------------------------------------------ writing

    def send(self, packet: bytes, ws_frame: bytes | None = None) -> bool:
        """Queue one Engine.IO packet; False if the session is closed or too far behind."""
        if self.closed:
            return False
        ws = self.ws
        if ws is not None:
            conn = self.conn
            if conn is not None:
                return Conn.push_frame(conn, ws_frame or frame_text(packet))
            if ws.protocol.state is not State.OPEN:
                return False
            ws.protocol.send_text(packet)
            ws.send_data()
            return True
        if self.queued > self.limit:
            if self.conn is not None:
                self.conn.metrics.slow_consumers.inc()
            logger.info("closing slow polling client %r", self)
            self.end()
            return False
        self.queue.append(packet)
        self.queued += len(packet)
        poll = self.poll
        if poll is not None and not poll.done():
            poll.set_result(None)
        return True

    def take(self, max_bytes: int) -> list[bytes]:
        """The queued packets for one poll response (at least one, at most ``max_bytes``)."""
        out: list[bytes] = []
        size = 0
        queue = self.queue
        i = 0
        while i < len(queue) and (not out or size + len(queue[i]) + 1 <= max_bytes):
            out.append(queue[i])
            size += len(queue[i]) + 1
            i += 1
        del queue[:i]
        self.queued -= sum(len(p) for p in out)
        return out

    def end(self) -> None:
        """The session is over (any reason): release a waiting poll, clean the Conn up."""
        if self.closed:
            return
        self.closed = True
        if self.ws is None:
            self.queue.append(codec.EIO_CLOSE.encode())
        poll = self.poll
        if poll is not None and not poll.done():
            poll.set_result(None)
        ws = self.ws
        if ws is not None and ws.protocol.state is State.OPEN:
            spawn(ws.close())
        if self.conn is not None:
            self.conn.closing = True
        self.owner.ended(self)


class SioConn(Conn):
    """A Conn whose frames become Socket.IO packets of an ``EioSession``."""

    __slots__ = ("eio",)

    def __init__(
        self,
        eio: EioSession,
        principal: Principal,
        exp: float,
        session_id: str,
        *,
        rate: float,
        send_limit: int,
        metrics: Metrics,
    ) -> None:
        # ``ws`` is the session's WebSocket once there is one (Conn's writer then applies).
        super().__init__(
            cast(WebSocket, eio.ws),
            principal,
            exp,
            session_id,
            rate=rate,
            send_limit=send_limit,
            metrics=metrics,
        )
        self.eio = eio

    def opened(self) -> None:
        """Socket.IO CONNECT accepted: ``pid`` is the Parley session (connection recovery)."""
        self.eio.send(
            codec.encode_sio(codec.SIO_CONNECT, {"sid": self.eio.sid, "pid": self.session_id})
        )

    @property
    def open(self) -> bool:
        return not self.closing and not self.eio.closed

    def push(self, data: bytes) -> bool:
        packet = packet_of(data, self.joined)
        if packet is None:
            return False
        return self._out(packet, None)

    def push_frame(self, frame: bytes) -> bool:
        last = _LAST
        event = last.event if frame is last.wire else last.event_for(frame)
        if event is None:
            return False
        cid, joined = event.cid, self.joined
        if cid is not None and joined and (len(joined) > 1 or cid not in joined):
            # In several conversations: the offset names them all (one packet per receiver).
            # Otherwise the packet is the same for every receiver, built once per event.
            return self._out(event.packet(joined), None)
        if self.eio.ws is not None:  # the fan-out path: as few steps as possible
            ws_frame = last.ws_frame or last.ws_frame_for(frame)
            if ws_frame is None:
                return False
            # Conn.push_frame checks closing (set when the session ends) and the socket.
            return Conn.push_frame(self, ws_frame)
        packet = last.packet
        return packet is not None and self._out(packet, None)

    def _out(self, packet: bytes, ws_frame: bytes | None) -> bool:
        if self.closing or self.eio.closed:
            self.metrics.drops.labels("closed").inc()
            return False
        if ws_frame is None and not packet:
            return False
        if self.eio.ws is None:
            ok = self.eio.send(packet)
            if ok:
                self.metrics.delivered += 1
            return ok
        return Conn.push_frame(self, ws_frame or frame_text(packet))

    def send(self, frame: dict[str, Any]) -> bool:
        cmd_id = frame.get("id")
        if isinstance(cmd_id, str) and cmd_id.isdigit() and "success" in frame:
            envelope = {k: v for k, v in frame.items() if k not in ("event", "id")}
            return self._out(codec.ack_packet(int(cmd_id), envelope), None)
        return self.push(jsonutil.dumps(frame))

    async def wait_writable(self, patience: float = 30.0) -> None:
        if self.eio.ws is not None:
            await Conn.wait_writable(self, patience)
            return
        deadline = time.monotonic() + patience
        while not self.closing and self.eio.queued > self.limit // 2:
            if time.monotonic() > deadline:
                self.metrics.slow_consumers.inc()
                self.close(CLOSE_TRY_AGAIN, "too slow: send queue full")
                return
            await asyncio.sleep(0.005)

    def close(self, code: int, reason: str) -> None:
        """End the session; Socket.IO ``disconnect`` for a kick or an expired token.

        A kicked connection (its session resumed elsewhere) or an expired token gets a
        server-side DISCONNECT (socket.io-client does not reconnect by itself); drain, slow
        and heartbeat closes just end the transport, so the client reconnects and recovers.
        """
        if self.closing:
            return
        eio = self.eio
        if code == CLOSE_TOKEN_EXPIRED:
            self.send(envelopes.error_frame(ErrorCode.UNAUTHORIZED, "token expired"))
        if code in (CLOSE_POLICY, CLOSE_TOKEN_EXPIRED):
            self._out(codec.encode_sio(codec.SIO_DISCONNECT), None)
        if eio.ws is not None:
            if self.queued:
                Conn.flush(self)
            Conn.close(self, code, reason)  # the WebSocket handler then ends the session
            return
        self.closing = True
        self.metrics.closes.labels(str(code)).inc()
        eio.end()

    def send_ping(self) -> None:
        """Engine.IO heartbeat: ``2`` every heartbeat; no ``3`` since the last one: close."""
        eio = self.eio
        if eio.pong_due:
            self.close(4408, "heartbeat timeout")
            return
        eio.pong_due = True
        eio.send(codec.EIO_PING.encode())
