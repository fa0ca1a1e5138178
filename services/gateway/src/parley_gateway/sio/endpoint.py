"""``/socket.io/``: Engine.IO v4 (long-polling and WebSocket) and Socket.IO v5, default namespace.

Every packet a client sends becomes the frame ``/ws`` would have received and goes through
the gateway's own command path (``Gateway.submit_frame``): the same authorization, limits,
rate limits, backpressure and replies. ``emit(event, data, ack)`` gets the reply envelope
through the ack; server events are ``socket.on(event, frame)`` with the ``/ws`` frame.

No sticky sessions: an Engine.IO session id starts with the key of the gateway that holds the
session (``instance_key``); a polling request that lands on another gateway is forwarded to
it over NATS (``subjects.gateway_engineio``) and answered from there.

Connection state recovery: the Socket.IO ``pid`` is the Parley session id and the offset of
each durable event is ``<conversationId>:<seq>``; a CONNECT with ``pid`` and ``offset`` is a
Parley session resume (any gateway), so ``socket.recovered`` is true and the missed durable
events are replayed in order.
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

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.auth import verify_token
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.ids import is_valid_id, new_id
from parley_gateway.sio import codec
from parley_gateway.sio.session import EioSession, SioConn, parse_offset, spawn
from parley_gateway.slim import slim_after_handshake

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


def connect_error(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> bytes:
    """``44{message, data}``: the client's ``connect_error`` (``err.data.code`` is the code)."""
    return codec.encode_sio(
        codec.SIO_CONNECT_ERROR,
        {"message": message, "data": envelopes.error_body(code, message, details)},
    )


class SocketIO:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.hub = gateway.hub
        self.settings = gateway.settings
        self.key = instance_key(self.hub.instance_id)
        self.sessions: dict[str, EioSession] = {}
        self.interval_ms = int(self.settings.heartbeat_seconds * 1000)
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        assert self.hub.nc is not None
        self._sub = await self.hub.nc.subscribe(
            subjects.gateway_engineio(self.key), cb=self._on_forwarded
        )
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
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
            spawn(self.gw.close_conn(conn))

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
            return await self._forward(method, sid, body)
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
        if not eio.queue and not eio.closed and not eio.upgrading:
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

    async def _forward(self, method: str, sid: str, body: bytes) -> tuple[int, str, bytes]:
        """A poll for a session of another gateway: ask that gateway over NATS."""
        nc = self.hub.nc
        key = sid[:16]
        if nc is None or len(key) != 16 or any(c not in "0123456789abcdef" for c in key):
            return self._error(_UNKNOWN_SID)
        request = {"method": method, "sid": sid, "body": body.decode("utf-8", "replace")}
        try:
            reply = await nc.request(
                subjects.gateway_engineio(key),
                jsonutil.dumps(request),
                timeout=self.settings.heartbeat_seconds + 10,
            )
            doc = jsonutil.loads(reply.data)
            return int(doc["status"]), str(doc["type"]), str(doc["body"]).encode()
        except (nats.errors.Error, ValueError, KeyError, TypeError):
            # That gateway is gone (or never existed): the client opens a new session and
            # recovers its Socket.IO connection there.
            return self._error(_UNKNOWN_SID)

    async def _on_forwarded(self, msg: Msg) -> None:
        spawn(self._answer(msg))  # a long poll must not hold up the subscription

    async def _answer(self, msg: Msg) -> None:
        try:
            req = jsonutil.loads(msg.data)
            method, sid, body = str(req["method"]), str(req["sid"]), str(req["body"]).encode()
        except (ValueError, KeyError, TypeError):
            return
        status, ctype, out = await self.local(method, sid, body)
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(
                jsonutil.dumps({"status": status, "type": ctype, "body": out.decode()})
            )

    # ------------------------------------------------------------------ WebSocket

    async def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
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
        ws.parley_sio = target  # type: ignore[attr-defined]
        return None

    async def handler(self, ws: ServerConnection) -> None:
        target: EioSession | str = ws.parley_sio  # type: ignore[attr-defined]
        del ws.parley_sio  # type: ignore[attr-defined]
        await self.ws_handler(ws, target)

    def check_upgrade(self, query: str, headers: Headers) -> tuple[int, bytes] | EioSession | str:
        """A WebSocket handshake on /socket.io/: the session to upgrade, a token, or an error."""
        params = parse_qs(query)
        if params.get("EIO") != ["4"]:
            return _BAD_VERSION[0], jsonutil.dumps(_BAD_VERSION[1])
        if params.get("transport") != ["websocket"]:
            return _UNKNOWN_TRANSPORT[0], jsonutil.dumps(_UNKNOWN_TRANSPORT[1])
        sids = params.get("sid")
        if sids:
            eio = self.sessions.get(sids[0])
            if eio is None or eio.ws is not None or eio.closed:
                return _UNKNOWN_SID[0], jsonutil.dumps(_UNKNOWN_SID[1])
            return eio
        if self.hub.draining or not self.hub.ready:
            return 503, jsonutil.dumps(
                envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "instance not ready or draining")
            )
        return bearer(headers, params) or ""

    async def ws_handler(self, ws: ServerConnection, target: EioSession | str) -> None:
        slim_after_handshake(ws)
        if isinstance(target, EioSession):
            eio = target
            if not await self._upgrade(eio, ws):
                return
        else:
            eio = self.new_session(target or None)
            eio.ws = ws
            await ws.send(self.open_packet(eio.sid, upgrades=[]).decode())
        try:
            recv = ws.recv
            while not eio.closed:
                message = await recv()
                if isinstance(message, bytes):
                    self.refuse(eio, "binary packets are not supported")
                    continue
                await self.on_packet(eio, message)
        except ConnectionClosed:
            pass
        finally:
            eio.end()

    async def _upgrade(self, eio: EioSession, ws: ServerConnection) -> bool:
        """polling → WebSocket: ``2probe``/``3probe``, then ``5``; queued packets follow."""
        try:
            probe = await asyncio.wait_for(ws.recv(), 10)
            if probe != "2probe":
                return False
            eio.upgrading = True
            await ws.send("3probe")
            if eio.poll is not None and not eio.poll.done():
                eio.poll.set_result(None)  # the client pauses polling: let its poll return
            if await asyncio.wait_for(ws.recv(), 10) != codec.EIO_UPGRADE:
                eio.upgrading = False
                return False
        except (TimeoutError, ConnectionClosed):
            eio.upgrading = False
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

    # ------------------------------------------------------------------ packets

    async def on_packet(self, eio: EioSession, packet: str) -> None:
        kind = packet[:1]
        if kind == codec.EIO_MESSAGE:
            await self.on_message(eio, packet[1:])
        elif kind == codec.EIO_PONG:
            eio.pong_due = False
        elif kind == codec.EIO_CLOSE:
            eio.end()
        elif kind == codec.EIO_PING:
            eio.send(codec.EIO_PONG.encode() + packet[1:].encode())
        elif kind != codec.EIO_NOOP:
            self.refuse(eio, "not an Engine.IO packet")

    def refuse(self, eio: EioSession, message: str) -> None:
        """A bad packet: an ``error`` event when connected (rate limited), else connect_error."""
        conn = eio.conn
        if conn is None:
            eio.send(connect_error(ErrorCode.VALIDATION_ERROR, message))
            return
        if not conn.bucket.take():
            conn.send(envelopes.error_frame(ErrorCode.RATE_LIMITED, "too many bad packets"))
            return
        conn.send(envelopes.error_frame(ErrorCode.VALIDATION_ERROR, message))

    async def on_message(self, eio: EioSession, data: str) -> None:
        start = time.perf_counter()
        try:
            pkt = codec.decode_sio(data)
        except codec.PacketError as exc:
            self.refuse(eio, str(exc))
            return
        conn = eio.conn
        if pkt.nsp != "/":
            if pkt.type == codec.SIO_CONNECT:
                message = "Invalid namespace"
                body = envelopes.error_body(
                    ErrorCode.NOT_FOUND,
                    f"namespace {pkt.nsp} does not exist: Parley has only the default namespace /",
                    {"namespace": pkt.nsp},
                )
                payload = {"message": message, "data": body}
                eio.send(codec.encode_sio(codec.SIO_CONNECT_ERROR, payload, nsp=pkt.nsp))
            else:
                self.refuse(eio, f"namespace {pkt.nsp} is not connected")
            return
        if pkt.type == codec.SIO_CONNECT:
            if conn is None:
                await self.connect(eio, pkt.data)
            else:
                self.refuse(eio, "already connected")
        elif pkt.type == codec.SIO_EVENT:
            if conn is None:
                eio.send(connect_error(ErrorCode.UNAUTHORIZED, "connect before sending events"))
            else:
                await self.on_event(conn, pkt, start)
        elif pkt.type == codec.SIO_DISCONNECT:
            eio.end()
        elif pkt.type == codec.SIO_CONNECT_ERROR:
            self.refuse(eio, "CONNECT_ERROR is sent by servers only")
        # SIO_ACK: the server asks for no acks; a client's is ignored.

    async def on_event(self, conn: SioConn, pkt: codec.SioPacket, start: float) -> None:
        args = pkt.data
        name = args[0] if isinstance(args, list) and args else None
        problem = None
        if not isinstance(name, str):
            problem = "an event is [name, data]: the name must be a string"
        elif len(args) > 2:
            problem = "an event carries one data argument (binary and extra arguments: no)"
        if problem is not None:
            if not conn.bucket.take():
                err = envelopes.fail(ErrorCode.RATE_LIMITED, "too many bad packets")
            else:
                err = envelopes.fail(ErrorCode.VALIDATION_ERROR, problem, {"field": "event"})
            if pkt.id is not None:
                reply = name if isinstance(name, str) and len(name) <= 64 else "error"
                conn.send(envelopes.reply_frame(reply, str(pkt.id), err))
            else:
                conn.send({"event": "error", **err})
            return
        frame: dict[str, Any] = {"event": name}
        if len(args) == 2:
            frame["data"] = args[1]
        if pkt.id is not None:
            frame["id"] = str(pkt.id)
        await self.gw.submit_frame(conn, frame, start)

    async def connect(self, eio: EioSession, auth: Any) -> None:
        """Socket.IO CONNECT: authenticate like /ws, resume a session (recovery), open."""
        hub = self.hub
        if hub.draining or not hub.ready:
            eio.send(connect_error(ErrorCode.SERVICE_UNAVAILABLE, "instance not ready or draining"))
            return
        if auth is not None and not isinstance(auth, dict):
            eio.send(connect_error(ErrorCode.VALIDATION_ERROR, "auth must be an object"))
            return
        auth = auth or {}
        tok = auth.get("token")
        token = tok if isinstance(tok, str) and tok else eio.token
        if not token:
            self.gw.metrics.auth_failures.inc()
            eio.send(connect_error(ErrorCode.UNAUTHORIZED, "missing token"))
            return
        try:
            principal, exp = verify_token(token, self.gw.jwt)
        except ParleyError as exc:
            self.gw.metrics.auth_failures.inc()
            eio.send(connect_error(exc.code, exc.message, exc.details))
            return
        pid = auth.get("pid")
        resume = pid if isinstance(pid, str) and is_valid_id(pid) else None
        since = parse_offset(auth.get("offset")) if resume else None
        resume, restored = await self.gw.resume(principal, resume, since)
        if eio.closed:
            return
        session_id = resume if restored is not None and resume else new_id("ses")
        settings = self.settings
        conn = SioConn(
            eio,
            principal,
            exp,
            session_id,
            rate=settings.commands_per_second,
            send_limit=settings.send_queue_limit,
            metrics=self.gw.metrics,
        )
        eio.conn = conn
        eio.token = None
        try:
            await self.gw.open_conn(conn, restored)
        except Exception:
            logger.exception("opening %r failed", conn)
            eio.end()
