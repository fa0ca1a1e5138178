"""The gateway: ``/ws`` (docs/protocol.md), Socket.IO and the HTTP API on one port (front.py)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.auth import verify_token_async
from parley_contract.commands import parse_payload
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, may_send, parse_command
from parley_contract.ids import is_valid_id, new_id
from parley_contract.internal import Principal
from parley_contract.limits import INT64_MAX
from parley_gateway.conn import Conn, Pipeline
from parley_gateway.files_http import AttachmentRoutes
from parley_gateway.front import Front, WsRoute, json_response
from parley_gateway.front_http import ASGIApp
from parley_gateway.http_api import create_app
from parley_gateway.hub import Hub
from parley_gateway.metrics import Metrics
from parley_gateway.origins import PolicyCORSMiddleware, origin_refusal
from parley_gateway.sessions import SessionsUnavailable, SinceOnly
from parley_gateway.settings import Settings
from parley_gateway.sio.asgi import with_socketio
from parley_gateway.sio.endpoint import PATH as SIO_PATH
from parley_gateway.sio.endpoint import SocketIO
from parley_gateway.slim import slim_after_handshake

logger = logging.getLogger(__name__)

_FRAME_KEYS = frozenset({"event", "id", "data"})
# Commands relayed as-is to the conversation service (or the agent bridge for tool:call).
_RELAYED = frozenset(
    {
        Event.CONVERSATION_CREATE,
        Event.CONVERSATION_UPDATE,
        Event.CONVERSATION_DELETE,
        Event.MESSAGE_SEND,
        Event.MESSAGE_EDIT,
        Event.MESSAGE_DELETE,
        Event.MESSAGE_REACT,
        Event.MESSAGE_STOP,
        Event.TOOL_CALL,
        Event.TASK_CREATE,
        Event.CONVERSATION_READ,
    }
)
_RECEIPT_KEYS = ("unreadCount", "readSeq", "cursors")
_INVALID = object()  # a frame that is not JSON
# On disconnect, how long the connection's commands in flight may still take.
_CLOSE_GRACE_SECONDS = 2.0
# A resume waits at most this long for the session's previous connection to be cleaned up.
_CLEANUP_WAIT_SECONDS = _CLOSE_GRACE_SECONDS + 3.0


def _chain_key(frame: dict[str, Any]) -> str | None:
    data = frame.get("data")
    if isinstance(data, dict):
        cid = data.get("conversationId")
        if isinstance(cid, str):
            return cid
    return None


_CONTENT_CHECKED = frozenset({Event.MESSAGE_SEND, Event.MESSAGE_EDIT})


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


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
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
            "/ws": WsRoute(self.handler, self.process_request, max_size=settings.max_frame_bytes),
            SIO_PATH: WsRoute(
                self.sio.handler, self.sio_process_request, max_size=settings.max_frame_bytes
            ),
        }
        self.front: Front | None = None
        self._rate_message = (
            f"more than {settings.commands_per_second:g} commands per second (burst 2x)"
        )

    # ------------------------------------------------------------------ HTTP / handshake

    async def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """The ``/ws`` upgrade (the front routes only upgrades here): readiness, then auth."""
        _, _, query = request.path.partition("?")
        refused = self._refuse_origin(request)
        if refused is not None:
            return refused
        if self.hub.draining or not self.hub.ready:
            return json_response(
                503, envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "instance not ready or draining")
            )
        params = parse_qs(query)
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
        ws.parley_auth = (principal, exp, session, restored)  # type: ignore[attr-defined]
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

    async def sio_process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """The ``/socket.io/`` upgrade: the browser origin first, then Socket.IO's own checks."""
        refused = self._refuse_origin(request)
        if refused is not None:
            return refused
        return await self.sio.process_request(ws, request)

    # ------------------------------------------------------------------ WebSocket

    async def handler(self, ws: ServerConnection) -> None:
        auth: tuple[Principal, float, str | None, dict[str, int] | None] | None = getattr(
            ws, "parley_auth", None
        )
        if auth is None:  # pragma: no cover - process_request always sets it
            await ws.close(1008, "unauthenticated")
            return
        principal, exp, resume, restored = auth
        del ws.parley_auth  # type: ignore[attr-defined]
        # The handshake's request (headers: ~3 KB, held by websockets' parser too), response
        # and logger adapter are not needed any more (idle memory, see slim.py).
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
        """The conversations (cid → last seq) of session ``resume`` of ``principal``, if any."""
        hub = self.hub
        restored: dict[str, int] | None = None
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
                # join newer than the last flush) is joined again too; join re-authorizes it.
                restored = {**restored, **since}
        return resume, restored

    async def open_conn(self, conn: Conn, restored: dict[str, int] | None) -> None:
        """Register ``conn``, send its hello, rejoin the conversations of a resumed session."""
        hub = self.hub
        conn.resumed = restored is not None
        self.metrics.connections_total.labels(str(conn.resumed).lower()).inc()
        if restored is not None:
            await hub.kick(conn.session_id)
        await hub.register(conn)
        conn.opened()
        first = Event.RECONNECTED if restored is not None else Event.CONNECTED
        hello: dict[str, Any] = {
            "sessionId": conn.session_id,
            "principal": conn.principal.model_dump(mode="json"),
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
            await self.rejoin(conn, restored)
        await hub.save_session(conn, ack=False)  # no round trip before the first command

    async def close_conn(self, conn: Conn) -> None:
        """After the transport closed: finish, leave, save (a resume waits for this)."""
        hub = self.hub
        cleaned = asyncio.get_running_loop().create_future()
        hub.cleaning[conn.session_id] = cleaned
        try:
            await self._cleanup(conn)
        finally:
            cleaned.set_result(None)
            if hub.cleaning.get(conn.session_id) is cleaned:
                del hub.cleaning[conn.session_id]

    async def _cleanup(self, conn: Conn) -> None:
        """After the connection closed: commands in flight, leave, save the session."""
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
        joined = dict(conn.joined)  # what a resume must restore
        try:
            await hub.unregister(conn)
        except Exception:  # never skip saving the session for one failed cleanup step
            logger.exception("cleanup of %r failed", conn)
        if not conn.kicked:
            await hub.save_session(conn, joined)

    async def submit(self, conn: Conn, message: str | bytes) -> None:
        """Start one client frame's command; waits only while MAX_IN_FLIGHT are running."""
        start = time.perf_counter()
        try:
            frame = jsonutil.loads(message)
        except ValueError:
            frame = _INVALID
        if not isinstance(frame, dict):
            self.bad_frame(conn, frame)
            return
        await self.submit_frame(conn, frame, start)

    async def submit_frame(self, conn: Conn, frame: dict[str, Any], start: float) -> None:
        """Start one command (a JSON object); waits only while MAX_IN_FLIGHT are running."""
        pipe = conn.pipe
        if pipe is None:
            pipe = conn.pipe = Pipeline()
        await pipe.slots.acquire()
        conn.pipe = pipe  # dropped meanwhile if everything finished: the same one, now empty
        key = _chain_key(frame)
        prev = pipe.chains.get(key)
        conn.busy += 1
        task = asyncio.get_running_loop().create_task(
            self._run(conn, pipe, key=key, prev=prev, frame=frame, start=start)
        )
        pipe.chains[key] = task
        pipe.tasks.add(task)

    async def _run(
        self,
        conn: Conn,
        pipe: Pipeline,
        *,
        key: str | None,
        prev: asyncio.Task[None] | None,
        frame: dict[str, Any],
        start: float,
    ) -> None:
        me = asyncio.current_task()
        try:
            if prev is not None and not prev.done():
                await asyncio.wait((prev,))  # the previous command of this chain first
            await self.on_command(conn, frame, start)
        finally:
            conn.busy -= 1
            pipe.slots.release()
            pipe.tasks.discard(me)
            if pipe.chains.get(key) is me:
                del pipe.chains[key]
            if not pipe.tasks and conn.pipe is pipe:
                conn.pipe = None

    def bad_frame(self, conn: Conn, frame: object) -> None:
        """A frame that is not a JSON object: an ``error`` frame (no id to answer)."""
        # Garbage counts against the rate limit too (a flood of it gets RATE_LIMITED).
        if not conn.bucket.take():
            self.metrics.commands.labels("-", "RATE_LIMITED").inc()
            conn.send(envelopes.error_frame(ErrorCode.RATE_LIMITED, self._rate_message))
            return
        if frame is _INVALID:
            self.metrics.commands.labels("-", "invalid_json").inc()
            conn.send(envelopes.error_frame(ErrorCode.VALIDATION_ERROR, "invalid JSON"))
        else:
            self.metrics.commands.labels("-", "not_object").inc()
            conn.send(
                envelopes.error_frame(ErrorCode.VALIDATION_ERROR, "a frame must be a JSON object")
            )

    async def on_command(self, conn: Conn, frame: dict[str, Any], start: float) -> None:
        """One command (a JSON object): validate, dispatch, reply exactly once if it has an id."""
        cmd_id = frame.get("id")
        if cmd_id is not None and not envelopes.is_command_id(cmd_id):
            conn.send(
                envelopes.error_frame(
                    ErrorCode.VALIDATION_ERROR,
                    "id must be a string of 1-128 characters or an integer",
                    {"field": "id"},
                )
            )
            return
        name = frame.get("event")
        reply_event = name if isinstance(name, str) and len(name) <= 64 else Event.ERROR.value
        event = parse_command(name)
        label = event.value if event is not None else "unknown"
        try:
            if event is None:
                raise ParleyError(
                    ErrorCode.UNKNOWN_EVENT,
                    f"unknown event {name!r}" if isinstance(name, str) else "event is required",
                    {"field": "event"},
                )
            extra = set(frame) - _FRAME_KEYS
            if extra:
                raise ParleyError(
                    ErrorCode.VALIDATION_ERROR,
                    f"unknown field {sorted(extra)[0]!r}",
                    {"field": sorted(extra)[0]},
                )
            if not conn.bucket.take():
                raise ParleyError(
                    ErrorCode.RATE_LIMITED,
                    self._rate_message,
                    {"limit": self.settings.commands_per_second},
                )
            if not may_send(conn.principal.kind, event):
                raise ParleyError(
                    ErrorCode.FORBIDDEN, f"a {conn.principal.kind.value} may not send {event.value}"
                )
            data = frame.get("data", {})
            if data is None:
                data = {}
            if event in _CONTENT_CHECKED and isinstance(data, dict):
                content = data.get("content")
                if isinstance(content, str) and len(content) > self.settings.max_content_chars:
                    raise ParleyError(
                        ErrorCode.PAYLOAD_TOO_LARGE,
                        f"content is longer than {self.settings.max_content_chars} characters",
                        {"field": "content", "limit": self.settings.max_content_chars},
                    )
            parse_payload(event, data)
            envelope = await self.dispatch(conn, event, data)
            if envelope is None:  # success without data: no envelope unless a reply is due
                self.metrics.commands.labels(label, "ok").inc()
                self.metrics.command_latency.labels(label).observe(time.perf_counter() - start)
                if cmd_id is not None:
                    conn.send(envelopes.reply_frame(reply_event, cmd_id, envelopes.ok(None)))
                return
        except ParleyError as exc:
            envelope = envelopes.fail_from(exc)
        except Exception:
            logger.exception("command %s failed", label)
            envelope = envelopes.fail(ErrorCode.INTERNAL_ERROR, "internal error")
        outcome = "ok" if envelope["success"] else str(envelope["error"]["code"])
        self.metrics.commands.labels(label, outcome).inc()
        self.metrics.command_latency.labels(label).observe(time.perf_counter() - start)
        if cmd_id is not None:
            conn.send(envelopes.reply_frame(reply_event, cmd_id, envelope))
        elif not envelope["success"]:
            conn.send({"event": Event.ERROR.value, **envelope})

    async def dispatch(
        self, conn: Conn, event: Event, data: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The reply envelope of a command; ``None`` for a success with ``data: null``."""
        hub = self.hub
        if event in _RELAYED:
            # Every relayed command writes: it carries an idempotency key, so that a retry
            # (Hub.request, on another replica) is applied once. The client's clientMessageId
            # for a message, else one made here.
            body = hub.command_body(conn.principal, data)
            cmid = data.get("clientMessageId") if event is Event.MESSAGE_SEND else None
            body["idempotencyKey"] = cmid if isinstance(cmid, str) and cmid else new_id("idem")
            return await hub.request(subjects.command(event), body)
        if event is Event.CONVERSATION_JOIN:
            since = data.get("sinceSeq")
            return await self.join(conn, data["conversationId"], since)
        if event is Event.CONVERSATION_LEAVE:
            # Watching, not membership (Socket.IO room semantics): unsubscribe this
            # connection and nothing else. Quitting is conversation:update removing oneself.
            cid = data["conversationId"]
            await hub.leave(conn, cid)
            return envelopes.ok({"conversationId": cid, "watching": False})
        if event in (Event.TYPING_START, Event.TYPING_STOP):
            cid = data["conversationId"]
            if cid not in conn.joined:
                # Joined = a current participant: a removal evicts the connection (hub.evict).
                raise ParleyError(
                    ErrorCode.FORBIDDEN,
                    "not joined: join the conversation (as a participant) before typing events",
                )
            p = conn.principal
            payload = {
                "conversationId": cid,
                "principalId": p.id,
                "kind": p.kind.value,
                "name": p.name,
            }
            # Everyone in the conversation but the sending connection (origin header).
            frame = envelopes.event_frame(event, payload, conversation_id=cid)
            await hub.publish(cid, frame, origin=conn.session_id)
            return None
        if event in (Event.PRESENCE_ONLINE, Event.PRESENCE_OFFLINE):
            status = data.get("status")
            for cid in list(conn.joined):
                await hub.publish_presence(
                    conn, cid, online=event is Event.PRESENCE_ONLINE, status=status
                )
            return envelopes.ok({"conversations": len(conn.joined)})
        raise ParleyError(ErrorCode.UNKNOWN_EVENT, f"unsupported command {event.value}")

    async def rejoin(self, conn: Conn, joined: dict[str, int], *, quiet: bool = False) -> None:
        """Join again each conversation a resumed or moved connection had, from its seq;
        a conversation that refuses is one ``error`` frame naming it, not the end of it."""
        for cid, seq in joined.items():
            try:
                env = await self.join(conn, cid, seq, quiet=quiet)
            except ParleyError as exc:
                env = envelopes.fail_from(exc)
            if not env["success"]:
                details = dict(env["error"].get("details") or {})
                details["conversationId"] = cid
                conn.send(
                    envelopes.error_frame(
                        ErrorCode(env["error"]["code"]), env["error"]["message"], details
                    )
                )

    async def join(
        self, conn: Conn, cid: str, since: int | None, *, quiet: bool = False
    ) -> dict[str, Any]:
        """conversation:join — authorize, subscribe, replay seq > since, then live events.

        ``quiet``: no ``conversation:joined`` and no presence (a connection moving to this
        gateway with its conversations, see parley_gateway.sio.relay).
        """
        hub = self.hub
        if cid not in conn.joined and len(conn.joined) >= self.settings.max_conversations:
            raise ParleyError(
                ErrorCode.RATE_LIMITED,
                f"at most {self.settings.max_conversations} conversations per connection",
                {"limit": self.settings.max_conversations},
            )
        was_member = cid in conn.joined
        conv = await hub.acquire(cid)  # subscribe before asking where the conversation stands
        if was_member:  # a re-join replays from sinceSeq again; the subscription stays
            await hub.leave(conn, cid, announce=False)
        joined = False
        try:
            body = hub.command_body(conn.principal, {"conversationId": cid})
            envelope = await hub.request(subjects.command(Event.CONVERSATION_JOIN), body)
            if not envelope["success"]:
                return envelope
            info = envelope.get("data") or {}
            last_seq = info.get("lastSeq")
            if not isinstance(last_seq, int):
                last_seq = 0
            epoch = info.get("epoch")
            if not isinstance(epoch, int):
                epoch = 0
            if not quiet:
                conn.send(
                    envelopes.event_frame(
                        Event.CONVERSATION_JOINED,
                        {
                            "conversation": info.get("conversation"),
                            "lastSeq": last_seq,
                            "sinceSeq": since,
                            "epoch": epoch,
                            # Receipts (docs/protocol.md 3.6): the caller's unread count and
                            # read seq, the members' read and delivery cursors.
                            **{k: info[k] for k in _RECEIPT_KEYS if k in info},
                        },
                        conversation_id=cid,
                        epoch=epoch,
                    )
                )
            if not await hub.join(conn, cid, since, last_seq, epoch):
                return envelopes.fail(
                    ErrorCode.FORBIDDEN, "you are no longer a participant of this conversation"
                )
            joined = True
            key = (conn.principal.kind, conn.principal.id)
            if (
                not quiet
                and not was_member
                and not any(
                    m is not conn and (m.principal.kind, m.principal.id) == key
                    for m in conv.members
                )
            ):
                await hub.publish_presence(conn, cid, online=True)
            return envelopes.ok(
                {
                    "conversation": info.get("conversation"),
                    "lastSeq": last_seq,
                    "sinceSeq": since,
                    "epoch": epoch,
                    "deliveredSeq": conn.joined.get(cid, last_seq),
                }
            )
        finally:
            if not joined:
                await hub.release(conv)

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
