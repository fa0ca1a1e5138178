"""The gateway: ``/ws`` (docs/protocol.md), Socket.IO and the HTTP API on one port (front.py)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import Counter
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parley_contract import envelopes, jsonutil
from parley_contract.auth import verify_token_async
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.ids import is_valid_id, new_id
from parley_contract.internal import Principal
from parley_contract.limits import INT64_MAX
from parley_gateway.commands import Commands
from parley_gateway.conn import Conn
from parley_gateway.files_http import AttachmentRoutes
from parley_gateway.front import Front, WsRoute, json_response
from parley_gateway.front_http import ASGIApp
from parley_gateway.http_api import create_app
from parley_gateway.hub import Hub
from parley_gateway.metrics import Metrics
from parley_gateway.origins import PolicyCORSMiddleware, origin_refusal
from parley_gateway.sessions import SAVE_SECONDS, Restored, SessionsUnavailable, SinceOnly
from parley_gateway.settings import Settings
from parley_gateway.sio.asgi import with_socketio
from parley_gateway.sio.endpoint import PATH as SIO_PATH
from parley_gateway.sio.endpoint import SocketIO
from parley_gateway.slim import slim_after_handshake
from parley_gateway.wsconn import WebSocket

logger = logging.getLogger(__name__)

# On disconnect, how long the connection's commands in flight may still take.
_CLOSE_GRACE_SECONDS = 2.0
# A resume waits at most this long for the session's previous connection to be cleaned up.
_CLEANUP_WAIT_SECONDS = _CLOSE_GRACE_SECONDS + 3.0


def parse_since(raw: str, limit: int) -> dict[str, int]:
    """The ``since`` query parameter of a resume: base64url JSON ``{conversationId: lastSeq}``.

    Raises ParleyError(VALIDATION_ERROR) for anything else (padding is optional).
    """
    bad = ParleyError(
        ErrorCode.VALIDATION_ERROR,
        "since must be base64url JSON {conversationId: lastSeq (integer >= 0)}",
        {"field": "since"},
    )
    try:
        doc = jsonutil.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        raise bad from None
    if not isinstance(doc, dict) or len(doc) > limit:
        raise bad
    out: dict[str, int] = {}
    for cid, seq in doc.items():
        if not is_valid_id(cid) or type(seq) is not int or not 0 <= seq <= INT64_MAX:
            raise bad
        out[cid] = seq
    return out


class Gateway(Commands):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        # connections_total's children, looked up once (labels() per connect costs more than
        # the inc; made on first use: no series before its first connection).
        self._opened: dict[bool, Counter] = {}
        self.hub = Hub(settings, self.metrics)
        self.sio = SocketIO(self)
        self.jwt = settings.jwt_config()
        self.origins = settings.origin_policy()
        # Browser origins gate every HTTP request (socket.io polling included) and answer
        # CORS for the allowed ones; upgrades are gated in process_request.
        api = create_app(self.hub)
        self.attachments: AttachmentRoutes = api.state.attachments
        self.app: ASGIApp = PolicyCORSMiddleware(with_socketio(self.sio, api), self.origins)
        # WebSocket endpoints by path; every other request goes to ``self.app`` (front.py).
        self.ws_routes: dict[str, WsRoute] = {
            "/ws": WsRoute(
                self.handler,
                self.process_request,
                max_size=settings.max_frame_bytes,
                send_limit=settings.send_queue_limit,
            ),
            SIO_PATH: WsRoute(
                self.sio.handler,
                self.sio_process_request,
                max_size=settings.max_frame_bytes,
                send_limit=settings.send_queue_limit,
            ),
        }
        self.front: Front | None = None
        self._rate_message = (
            f"more than {settings.commands_per_second:g} commands per second (burst 2x)"
        )

    # ------------------------------------------------------------------ HTTP / handshake

    async def process_request(self, ws: WebSocket, request: Request) -> Response | None:
        """The ``/ws`` upgrade (the front routes only upgrades here): readiness, then auth."""
        _, _, query = request.path.partition("?")
        refused = self._refuse_origin(request)
        if refused is not None:
            return refused
        if self.hub.draining or not self.hub.ready:
            return json_response(
                503, envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "instance not ready or draining")
            )
        params = parse_qs(query) if query else {}
        token = None
        auth = request.headers.get("Authorization")
        if auth and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        elif params.get("access_token"):
            token = params["access_token"][0]
        if not token:
            self.metrics.auth_failures.inc()
            return json_response(401, envelopes.fail(ErrorCode.UNAUTHORIZED, "missing token"))
        try:
            principal, exp = await verify_token_async(token, self.jwt)
        except ParleyError as exc:
            self.metrics.auth_failures.inc()
            return json_response(exc.http_status, envelopes.fail_from(exc))
        session = params.get("session", [None])[0]
        if session is not None and not is_valid_id(session):
            session = None
        since: dict[str, int] | None = None
        if params.get("since"):
            try:
                since = parse_since(params["since"][0], self.settings.max_conversations)
            except ParleyError as exc:
                return json_response(exc.http_status, envelopes.fail_from(exc))
        try:  # before the upgrade: a resume the session store cannot answer is a 503
            session, restored = await self.resume(principal, session, since)
        except ParleyError as exc:
            return json_response(exc.http_status, envelopes.fail_from(exc))
        # Handed to the handler on the connection itself (nothing to leak if the handshake
        # fails after this point).
        ws.parley_auth = (principal, exp, session, restored)  # type: ignore[union-attr]
        return None

    def _refuse_origin(self, request: Request) -> Response | None:
        """403 for an upgrade (``/ws`` or ``/socket.io/``) from a browser origin that is not
        allowed; checked before anything else, the token included (docs/security.md)."""
        origins = request.headers.get_all("Origin")
        hosts = request.headers.get_all("Host")
        if self.origins.allows_all(origins, hosts):
            return None
        self.metrics.origin_refusals.inc()
        return json_response(403, origin_refusal(origins))

    async def sio_process_request(self, ws: WebSocket, request: Request) -> Response | None:
        """The ``/socket.io/`` upgrade: the browser origin first, then Socket.IO's own checks."""
        refused = self._refuse_origin(request)
        if refused is not None:
            return refused
        return await self.sio.process_request(ws, request)

    # ------------------------------------------------------------------ WebSocket

    async def handler(self, ws: WebSocket) -> None:
        auth: tuple[Principal, float, str | None, dict[str, int] | None] | None = getattr(
            ws, "parley_auth", None
        )
        if auth is None:  # pragma: no cover - process_request always sets it
            await ws.close(1008, "unauthenticated")
            return
        principal, exp, resume, restored = auth
        del ws.parley_auth  # type: ignore[union-attr]
        # The handshake's request (headers: ~3 KB, held by websockets' parser too), response
        # and logger adapter are not needed any more (idle memory, see slim.py).
        if isinstance(ws, ServerConnection):
            slim_after_handshake(ws)
        conn = Conn(
            ws,
            principal,
            exp,
            resume if restored is not None and resume else new_id("ses"),
            rate=self.settings.commands_per_second,
            send_limit=self.settings.send_queue_limit,
            metrics=self.metrics,
        )
        try:
            await self.open_conn(conn, restored)
            recv = ws.recv
            while True:  # not ``async for``: no async generator kept per connection
                await self.submit(conn, await recv())
        except ConnectionClosed:
            pass
        finally:
            await self.close_conn(conn)

    # ------------------------------------------------------------------ any transport
    # A connection's life, shared by /ws and /socket.io/ (parley_gateway.sio): resume, open
    # (register, hello, restore), commands (submit), close (cleanup).

    async def resume(
        self, principal: Principal, resume: str | None, since: dict[str, int] | None
    ) -> tuple[str | None, dict[str, int] | None]:
        """The conversations (cid → last seq) of session ``resume`` of ``principal``, if any
        (:class:`Restored`; :class:`SinceOnly` when the session could not be read)."""
        hub = self.hub
        restored: Restored | None = None
        if resume is not None:
            cleaning = hub.cleaning.get(resume)
            if cleaning is not None:
                # The session's previous connection on this instance is still leaving its
                # conversations and saving the session (a resume right after a close):
                # load what it saves, and do not kick it (a kicked connection saves nothing).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(cleaning), _CLEANUP_WAIT_SECONDS)
            try:
                restored = await hub.load_session(resume, principal)
            except SessionsUnavailable:
                if not since:
                    raise  # nothing to restore from: SERVICE_UNAVAILABLE, resume again
                # Degraded (issue 19): the client's own seqs are all there is. A new session
                # id (whose the old one is cannot be checked); each conversation is
                # re-authorized by the rejoin as always.
                return None, SinceOnly(since)
            if restored is not None and since:
                # The client's own last seqs win: exact also after a crash of the old instance
                # (whose delivered seqs may lag by up to one session flush interval). A
                # conversation the client names that the saved session does not have yet (a
                # join newer than the last flush) is joined again too; join re-authorizes it
                # (and announces presence there: not carried, the others may have seen it go).
                restored = Restored({**restored, **since}, restored.carried)
        return resume, restored

    async def open_conn(self, conn: Conn, restored: dict[str, int] | None) -> None:
        """Register ``conn``, send its hello, rejoin the conversations of a resumed session."""
        hub = self.hub
        conn.resumed = restored is not None
        opened = self._opened.get(conn.resumed)
        if opened is None:
            label = str(conn.resumed).lower()
            opened = self._opened[conn.resumed] = self.metrics.connections_total.labels(label)
        opened.inc()
        if restored is not None:
            await hub.kick(conn.session_id)
        await hub.register(conn)
        conn.opened()
        first = Event.RECONNECTED if restored is not None else Event.CONNECTED
        hello: dict[str, Any] = {
            "sessionId": conn.session_id,
            "principal": conn.principal.wire(),
            "instanceId": hub.instance_id,
            "heartbeatSeconds": self.settings.heartbeat_seconds,
            "sessionTtlSeconds": self.settings.session_ttl_seconds,
            "limits": self.settings.limits(),
        }
        if restored is not None:
            hello["conversations"] = [
                {"conversationId": cid, "lastSeq": seq} for cid, seq in restored.items()
            ]
        if isinstance(restored, SinceOnly):
            hello["degraded"] = ["sessions"]  # protocol section 1: restored from since alone
        conn.send(envelopes.event_frame(first, hello))
        if restored is not None:
            # Presence: a conversation whose members were never told this session went
            # offline gets no presence:online either (Restored; SinceOnly: nobody knows).
            carried = restored.carried if isinstance(restored, Restored) else frozenset()
            await self.rejoin(conn, restored, carried=carried)
        await hub.save_session(conn, ack=False)  # no round trip: see register

    async def close_conn(self, conn: Conn) -> None:
        """After the transport closed: finish, leave, save (a resume waits for this)."""
        hub = self.hub
        cleaned = asyncio.get_running_loop().create_future()
        hub.cleaning[conn.session_id] = cleaned
        try:
            await self._cleanup(conn, cleaned)
        finally:
            if not cleaned.done():
                cleaned.set_result(None)
            if hub.cleaning.get(conn.session_id) is cleaned:
                del hub.cleaning[conn.session_id]

    async def _cleanup(self, conn: Conn, cleaned: asyncio.Future[None]) -> None:
        """After the connection closed: commands in flight, leave, save the session.

        ``cleaned`` is set early when the save is slow (see ``_save_offline``)."""
        hub = self.hub
        pipe = conn.pipe
        if pipe is not None and pipe.tasks:
            # Let the commands in flight finish (bounded) before the cleanup, so that none
            # of them joins a conversation after the connection has left it.
            _, late = await asyncio.wait(set(pipe.tasks), timeout=_CLOSE_GRACE_SECONDS)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        conn.closing = True
        # What a resume must restore, saved with the offline mark before unregister
        # publishes presence:offline: a resume that reads the session after the offline
        # events reads the mark, and announces itself again (sessions.Restored). A resume
        # elsewhere that read it before kicks this connection, which then announces nothing
        # (unregister). A kicked connection saves nothing (its session lives on elsewhere).
        if not conn.kicked:
            await self._save_offline(conn, cleaned)
        try:
            await hub.unregister(conn)
        except Exception:
            logger.exception("cleanup of %r failed", conn)

    async def _save_offline(self, conn: Conn, cleaned: asyncio.Future[None]) -> None:
        """The offline-marked save, acknowledged before the offline events (up to
        OFFLINE_SAVE_SECONDS: a slow bucket is waited for). A resume of the session on this
        instance waits SAVE_SECONDS of it at most: then it loads what is there and kicks this
        connection, which announces nothing (nor does the resume, without the mark)."""
        save = asyncio.ensure_future(self.hub.save_session(conn, dict(conn.joined), offline=True))
        try:
            done, _ = await asyncio.wait((save,), timeout=SAVE_SECONDS)
            if not done:
                cleaned.set_result(None)
            await save
        except asyncio.CancelledError:
            save.cancel()
            raise

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        # The port opens at once (/healthz answers, /readyz says 503 until NATS is there);
        # SIGTERM works even while NATS is still unreachable.
        self.front = Front(
            self.app,
            self.ws_routes,
            host=self.settings.host,
            port=self.settings.port,
            max_head_bytes=self.settings.max_head_bytes,
            head_timeout=self.settings.head_timeout_seconds,
            keepalive_seconds=self.settings.http_keepalive_seconds,
            on_refused=lambda reason: self.metrics.http_refusals.labels(reason).inc(),
            reuse_port=self.settings.workers > 1,
        )
        await self.front.start()
        logger.info(
            "gateway %s listening on %s:%d",
            self.hub.instance_id,
            self.settings.host,
            self.settings.port,
        )
        starting = asyncio.create_task(self.hub.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        elif starting.exception() is not None:
            stopping.cancel()
            self.front.close()
            raise starting.exception()  # type: ignore[misc]
        else:
            await self.sio.start()
        await stopping
        await self.drain()

    async def drain(self) -> None:
        """SIGTERM: readiness off, stop accepting, close clients with 1001 over drain_seconds."""
        logger.info("draining: closing clients over %.1fs", self.settings.drain_seconds)
        # /readyz answers 503 and upgrades are refused with 503 from now on; the port stays
        # open during the spread so probes and load balancers see why.
        self.hub.draining = True
        await self.hub.drain_connections(self.settings.drain_seconds)
        await self.sio.stop()
        if self.front is not None:
            # Stop listening; WebSockets left get 1001, HTTP requests in progress finish.
            self.front.close()
            await self.front.wait_closed(grace=10)
        await self.hub.stop()
        await self.attachments.close()
        logger.info("gateway %s stopped", self.hub.instance_id)
