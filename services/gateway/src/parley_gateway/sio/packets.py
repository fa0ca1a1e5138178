"""Socket.IO packets of a client: CONNECT (auth, recovery), events (the /ws command path)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from parley_contract import envelopes
from parley_contract.auth import verify_token_async
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.ids import is_valid_id, new_id
from parley_gateway.hub import Hub
from parley_gateway.settings import Settings
from parley_gateway.sio import codec
from parley_gateway.sio.session import EioSession, SioConn, parse_offset

if TYPE_CHECKING:
    from parley_gateway.server import Gateway

logger = logging.getLogger(__name__)


def connect_error(code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> bytes:
    """``44{message, data}``: the client's ``connect_error`` (``err.data.code`` is the code)."""
    return codec.encode_sio(
        codec.SIO_CONNECT_ERROR,
        {"message": message, "data": envelopes.error_body(code, message, details)},
    )


class SocketLayer:
    """What ``SocketIO`` does with the packets of a session, whatever its transport."""

    gw: Gateway
    hub: Hub
    settings: Settings

    async def on_packet(self, eio: EioSession, packet: str) -> None:
        conn = eio.conn
        if conn is not None and packet[:2] == "42" and packet[2:3] != "/":
            # A connected client's event (every command): decoded once, straight to the
            # command path, as a /ws frame is (the general path below handles the rest).
            start = time.perf_counter()
            try:
                ack, args = codec.decode_event(packet)
            except codec.PacketError as exc:
                self.refuse(eio, str(exc))
                return
            await self.on_event(conn, ack, args, start)
            return
        kind = packet[:1]
        if kind == "b":  # a base64 binary attachment (polling)
            self.on_binary(eio)
            return
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

    def on_binary(self, eio: EioSession) -> None:
        """A binary frame: the attachment of a refused binary packet, else refused itself."""
        if eio.skip > 0:
            eio.skip -= 1
            return
        self.refuse(eio, "binary packets are not supported")

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
        if pkt.type in (codec.SIO_BINARY_EVENT, codec.SIO_BINARY_ACK):
            self.refuse_binary(eio, pkt)
            return
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
                await self.on_event(conn, pkt.id, pkt.data, start)
        elif pkt.type == codec.SIO_DISCONNECT:
            eio.end()
        elif pkt.type == codec.SIO_CONNECT_ERROR:
            self.refuse(eio, "CONNECT_ERROR is sent by servers only")
        # SIO_ACK: the server asks for no acks; a client's is ignored.

    def refuse_binary(self, eio: EioSession, pkt: codec.SioPacket) -> None:
        """Binary packets are not supported: the ack (if any) says so; attachments dropped."""
        eio.skip = min(pkt.attachments, 64)
        conn = eio.conn
        message = "binary packets are not supported: send JSON (e.g. base64 in a string)"
        if conn is None or pkt.type == codec.SIO_BINARY_ACK:
            self.refuse(eio, message)
            return
        if not conn.bucket.take():
            err = envelopes.fail(ErrorCode.RATE_LIMITED, "too many bad packets")
        else:
            err = envelopes.fail(ErrorCode.VALIDATION_ERROR, message, {"field": "data"})
        args = pkt.data
        name = args[0] if isinstance(args, list) and args and isinstance(args[0], str) else None
        if pkt.id is not None:
            reply = name if name is not None and len(name) <= 64 else "error"
            conn.send(envelopes.reply_frame(reply, str(pkt.id), err))
        else:
            conn.send({"event": "error", **err})

    async def on_event(self, conn: SioConn, ack: int | None, args: Any, start: float) -> None:
        """An EVENT ``[name, data]`` (ack id ``ack``): the /ws frame ``{event, data, id}``."""
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
            if ack is not None:
                reply = name if isinstance(name, str) and len(name) <= 64 else "error"
                conn.send(envelopes.reply_frame(reply, str(ack), err))
            else:
                conn.send({"event": "error", **err})
            return
        frame: dict[str, Any] = {"event": name}
        if len(args) == 2:
            frame["data"] = args[1]
        if ack is not None:
            frame["id"] = str(ack)
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
            principal, exp = await verify_token_async(token, self.gw.jwt)
        except ParleyError as exc:
            self.gw.metrics.auth_failures.inc()
            eio.send(connect_error(exc.code, exc.message, exc.details))
            return
        pid = auth.get("pid")
        resume = pid if isinstance(pid, str) and is_valid_id(pid) else None
        limit = self.settings.max_conversations
        since = parse_offset(auth.get("offset"), limit) if resume else None
        try:
            resume, restored = await self.gw.resume(principal, resume, since)
        except ParleyError as exc:  # the session store cannot answer (SERVICE_UNAVAILABLE)
            eio.send(connect_error(exc.code, exc.message, exc.details))
            return
        if resume is not None:
            logger.info(
                "Socket.IO recovery of %s on %s: %s (offset %s)",
                resume,
                eio.sid,
                "none" if restored is None else sorted(restored.items()),
                since,
            )
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
