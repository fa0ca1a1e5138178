"""``/socket.io/``: Engine.IO v4 (long-polling and WebSocket) and Socket.IO v5, default namespace.

Every packet a client sends becomes the frame ``/ws`` would have received and goes through
the gateway's own command path (``Gateway.submit_frame``): the same authorization, limits,
rate limits, backpressure and replies. ``emit(event, data, ack)`` gets the reply envelope
through the ack; server events are ``socket.on(event, frame)`` with the ``/ws`` frame.

No sticky sessions: an Engine.IO session id starts with the key of the gateway that holds the
session (``instance_key``); a polling request that lands on another gateway is forwarded to
it over NATS, and a WebSocket upgrade that lands there moves the session (``relay.py``).

Connection state recovery: the Socket.IO ``pid`` is the Parley session id and the offset of
each durable event is ``<conversationId>:<seq>``; a CONNECT with ``pid`` and ``offset`` is a
Parley session resume (any gateway), so ``socket.recovered`` is true and the missed durable
events are replayed in order.

This is the one Engine.IO session table of a gateway (open, poll, upgrade, probe); the codec,
the session and moving a session between gateways (the NATS relay, and the detach/adopt pair
that hands a session's state over) live beside it (codec.py, session.py, relay.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parley_contract import envelopes, jsonutil
from parley_contract.errors import ErrorCode
from parley_gateway.sio import codec
from parley_gateway.sio.packets import SocketLayer
from parley_gateway.sio.relay import Relay, key_of
from parley_gateway.sio.session import EioSession, SioConn, spawn
from parley_gateway.slim import slim_after_handshake
from parley_gateway.wsconn import WebSocket

if TYPE_CHECKING:
    from parley_gateway.server import Gateway

logger = logging.getLogger(__name__)

PATH = "/socket.io/"
CONNECT_TIMEOUT_SECONDS = 45.0  # an Engine.IO session without a Socket.IO CONNECT (socket.io's)
_POLL_MAX_BYTES = 512 * 1024  # one poll response (forwarded ones cross NATS: max 1 MB)
TEXT = "text/plain; charset=UTF-8"

# Engine.IO's own HTTP errors (what its clients expect).
_UNKNOWN_TRANSPORT = (400, {"code": 0, "message": "Transport unknown"})
_UNKNOWN_SID = (400, {"code": 1, "message": "Session ID unknown"})
_BAD_REQUEST = (400, {"code": 3, "message": "Bad request"})
_BAD_VERSION = (400, {"code": 5, "message": "Unsupported protocol version"})


def instance_key(instance_id: str) -> str:
    """16 hex digits naming a gateway inside session ids and NATS subjects."""
    return hashlib.sha256(instance_id.encode()).hexdigest()[:16]


def bearer(headers: Headers, params: dict[str, list[str]]) -> str | None:
    auth = headers.get("Authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    values = params.get("access_token")
    return values[0] if values else None


class SocketIO(SocketLayer):
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.hub = gateway.hub
        self.settings = gateway.settings
        self.key = instance_key(self.hub.instance_id)
        self.sessions: dict[str, EioSession] = {}
        self.interval_ms = int(self.settings.heartbeat_seconds * 1000)
        self.relay = Relay(self)
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.relay.start()
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.relay.stop()
        for eio in list(self.sessions.values()):
            eio.end()

    async def _sweep(self) -> None:
        """End sessions that never sent a Socket.IO CONNECT (connected ones have heartbeats)."""
        while True:
            await asyncio.sleep(5.0)
            limit = time.monotonic() - CONNECT_TIMEOUT_SECONDS
            for eio in list(self.sessions.values()):
                if eio.closed and eio.seen < limit:
                    self.sessions.pop(eio.sid, None)  # its close packet was never polled
                elif eio.conn is None and eio.seen < limit:
                    eio.end()

    def new_session(self, token: str | None) -> EioSession:
        sid = self.key + secrets.token_urlsafe(12)
        eio = EioSession(self, sid, self.settings.send_queue_limit, token)
        self.sessions[sid] = eio
        return eio

    def open_packet(self, sid: str, *, upgrades: list[str]) -> bytes:
        doc = {
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": self.interval_ms,
            "pingTimeout": self.interval_ms,
            "maxPayload": self.settings.max_frame_bytes,
        }
        return codec.EIO_OPEN.encode() + jsonutil.dumps(doc)

    def ended(self, eio: EioSession) -> None:
        """An Engine.IO session is over: forget it, clean its connection up (once)."""
        if eio.ws is not None or not eio.queue:
            self.sessions.pop(eio.sid, None)
        # else: kept until the next poll takes the close packet (or the sweep drops it)
        conn = eio.conn
        if conn is not None:
            spawn(self._close_conn(eio, conn))

    async def _close_conn(self, eio: EioSession, conn: SioConn) -> None:
        try:
            await self.gw.close_conn(conn)
        finally:
            # eio -> conn -> eio: a cycle; broken once the connection is cleaned up, both are
            # freed now, not by the cyclic GC's pauses.
            eio.conn = None

    # ------------------------------------------------------------------ HTTP long-polling

    async def http(
        self, method: str, query: str, headers: Headers, body: bytes
    ) -> tuple[int, str, bytes]:
        """One polling request: (status, content type, body)."""
        params = parse_qs(query)
        if params.get("EIO") != ["4"]:
            return self._error(_BAD_VERSION)
        if params.get("transport") != ["polling"]:
            return self._error(_UNKNOWN_TRANSPORT)
        sids = params.get("sid")
        if not sids:
            if method != "GET":
                return self._error(_BAD_REQUEST)
            if self.hub.draining or not self.hub.ready:
                return (
                    503,
                    "application/json",
                    jsonutil.dumps(
                        envelopes.fail(
                            ErrorCode.SERVICE_UNAVAILABLE, "instance not ready or draining"
                        )
                    ),
                )
            eio = self.new_session(bearer(headers, params))
            return 200, TEXT, self.open_packet(eio.sid, upgrades=["websocket"])
        sid = sids[0]
        if sid[:16] != self.key:
            return await self.relay.forward(method, sid, body)
        return await self.local(method, sid, body)

    @staticmethod
    def _error(err: tuple[int, dict[str, Any]]) -> tuple[int, str, bytes]:
        return err[0], "application/json", jsonutil.dumps(err[1])

    async def local(self, method: str, sid: str, body: bytes) -> tuple[int, str, bytes]:
        eio = self.sessions.get(sid)
        if eio is None:
            return self._error(_UNKNOWN_SID)
        eio.seen = time.monotonic()
        if method == "GET":
            return await self._poll(eio)
        if method != "POST" or eio.ws is not None:
            return self._error(_BAD_REQUEST)
        if len(body) > self.settings.max_frame_bytes:
            return (
                413,
                "application/json",
                jsonutil.dumps(
                    envelopes.fail(ErrorCode.PAYLOAD_TOO_LARGE, "payload larger than maxPayload")
                ),
            )
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return self._error(_BAD_REQUEST)
        for packet in codec.decode_payload(text):
            if eio.closed:
                break
            await self.on_packet(eio, packet)
        return 200, "text/html", b"ok"

    async def _poll(self, eio: EioSession) -> tuple[int, str, bytes]:
        if eio.poll is not None or eio.ws is not None:
            # Two polls at once, or a poll after the upgrade: engine.io closes the session.
            eio.end()
            return self._error(_BAD_REQUEST)
        if not eio.queue and not eio.closed and eio.upgrading < time.monotonic():
            eio.poll = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(eio.poll, self.settings.heartbeat_seconds + 5)
            except TimeoutError:
                pass
            finally:
                eio.poll = None
        packets = eio.take(_POLL_MAX_BYTES) if eio.queue else [codec.EIO_NOOP.encode()]
        if eio.closed and not eio.queue:
            self.sessions.pop(eio.sid, None)
        return 200, TEXT, codec.encode_payload(packets)

    # ------------------------------------------------------------------ WebSocket

    async def process_request(self, ws: WebSocket, request: Request) -> Response | None:
        """The WebSocket upgrade of /socket.io/: refused here, or accepted for ``handler``."""
        _, _, query = request.path.partition("?")
        target = self.check_upgrade(query, request.headers)
        if isinstance(target, tuple):
            status, body = target
            headers = Headers(
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Connection", "close"),
                ]
            )
            return Response(status, http.HTTPStatus(status).phrase, headers, body)
        ws.parley_sio = target  # type: ignore[union-attr]
        return None

    async def handler(self, ws: WebSocket) -> None:
        target: EioSession | Remote | str = ws.parley_sio  # type: ignore[union-attr]
        del ws.parley_sio  # type: ignore[union-attr]
        await self.ws_handler(ws, target)

    def check_upgrade(
        self, query: str, headers: Headers
    ) -> tuple[int, bytes] | EioSession | Remote | str:
        """A WebSocket handshake on /socket.io/: the session to upgrade, a token, or an error."""
        params = parse_qs(query)
        if params.get("EIO") != ["4"]:
            return _BAD_VERSION[0], jsonutil.dumps(_BAD_VERSION[1])
        if params.get("transport") != ["websocket"]:
            return _UNKNOWN_TRANSPORT[0], jsonutil.dumps(_UNKNOWN_TRANSPORT[1])
        sids = params.get("sid")
        if sids:
            eio = self.sessions.get(sids[0])
            if eio is None and key_of(sids[0]) not in (None, self.key):
                return Remote(sids[0])  # held by another gateway: moved here (relay.py)
            if eio is None or eio.ws is not None or eio.closed:
                return _UNKNOWN_SID[0], jsonutil.dumps(_UNKNOWN_SID[1])
            return eio
        if self.hub.draining or not self.hub.ready:
            return 503, jsonutil.dumps(
                envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "instance not ready or draining")
            )
        return bearer(headers, params) or ""

    async def ws_handler(self, ws: WebSocket, target: EioSession | Remote | str) -> None:
        if isinstance(ws, ServerConnection):
            slim_after_handshake(ws)
        if isinstance(target, EioSession):
            eio = target
            if not await self._upgrade(eio, ws):
                return
        elif isinstance(target, Remote):
            moved = await self.relay.upgrade(ws, target.sid)
            if moved is None:
                return
            eio = moved
        else:
            eio = self.new_session(target or None)
            eio.ws = ws
            await ws.send(self.open_packet(eio.sid, upgrades=[]).decode())
        try:
            recv = ws.recv
            while not eio.closed:
                message = await recv()
                if isinstance(message, bytes):
                    self.on_binary(eio)
                    continue
                await self.on_packet(eio, message)
        except ConnectionClosed:
            pass
        finally:
            eio.end()

    async def _upgrade(self, eio: EioSession, ws: WebSocket) -> bool:
        """polling → WebSocket: ``2probe``/``3probe``, then ``5``; queued packets follow."""
        try:
            probe = await asyncio.wait_for(ws.recv(), 10)
            if probe != "2probe":
                return False
            await ws.send("3probe")
            self.probe(eio.sid)
            if await asyncio.wait_for(ws.recv(), 10) != codec.EIO_UPGRADE:
                eio.upgrading = 0.0
                return False
        except (TimeoutError, ConnectionClosed):
            eio.upgrading = 0.0
            return False
        if eio.closed:
            return False
        pending, eio.queue, eio.queued = eio.queue, [], 0
        eio.ws = ws
        if eio.conn is not None:
            eio.conn.ws = ws
        for packet in pending:
            eio.send(packet)
        return True

    # ------------------------------------------------------------------ moving a session

    def probe(self, sid: str) -> bool:
        """A WebSocket probe for ``sid``: the client pauses polling, let its poll return."""
        eio = self.sessions.get(sid)
        if eio is None or eio.closed or eio.ws is not None:
            return False
        eio.upgrading = time.monotonic() + 10.0  # polls answer at once meanwhile
        if eio.poll is not None and not eio.poll.done():
            eio.poll.set_result(None)
        return True


class Remote:
    """The WebSocket upgrade of a session held by another gateway."""

    __slots__ = ("sid",)

    def __init__(self, sid: str) -> None:
        self.sid = sid
