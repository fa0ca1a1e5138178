"""A gateway's command path: every client frame (``/ws`` and Socket.IO) is looked up in the
route table (``parley_contract.routes``) and either answered here (the gateway's own routes,
and the join it wraps: parley_gateway.joins) or relayed to the service that handles it. Several
commands of one connection run at once, in order per conversation (conn.Pipeline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from parley_contract import envelopes, jsonutil
from parley_contract.commands import (
    ConversationJoin,
    ConversationLeave,
    Presence,
    Typing,
)
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.ids import new_id
from parley_contract.routes import ROUTES, Route, Service, route_of
from parley_gateway.chains import Command, run_chain
from parley_gateway.conn import Conn, Pipeline
from parley_gateway.hub import Hub
from parley_gateway.joins import Joins
from parley_gateway.metrics import Metrics
from parley_gateway.settings import Settings

logger = logging.getLogger(__name__)

_FRAME_KEYS = frozenset({"event", "id", "data"})
# Commands answered here without waiting for anything (relayed as ephemeral events): run
# inline by ``submit_frame`` when the connection has nothing else in flight.
_INLINE = frozenset({Event.TYPING_START.value, Event.TYPING_STOP.value})
INVALID = object()  # a frame that is not JSON


def _chain_key(frame: dict[str, Any]) -> str | None:
    data = frame.get("data")
    if isinstance(data, dict):
        cid = data.get("conversationId")
        if isinstance(cid, str):
            return cid
    return None


class Commands(Joins):
    """The command path of :class:`parley_gateway.server.Gateway` (which inherits it)."""

    settings: Settings
    metrics: Metrics
    hub: Hub
    _rate_message: str

    async def submit(self, conn: Conn, message: str | bytes) -> None:
        """Start one client frame's command; waits only while MAX_IN_FLIGHT are running."""
        start = time.perf_counter()
        try:
            frame = jsonutil.loads(message)
        except ValueError:
            frame = INVALID
        if not isinstance(frame, dict):
            self.bad_frame(conn, frame)
            return
        await self.submit_frame(conn, frame, start)

    async def submit_frame(self, conn: Conn, frame: dict[str, Any], start: float) -> None:
        """Start one command (a JSON object); waits only while MAX_IN_FLIGHT are running."""
        pipe = conn.pipe
        event = frame.get("event")
        if pipe is None and type(event) is str and event in _INLINE:
            # Nothing of this connection in flight (its order holds): run it in the reader's
            # own step, not in a task and a Pipeline of its own, one loop iteration later.
            conn.busy += 1
            try:
                await self.on_command(conn, frame, start)
            finally:
                conn.busy -= 1
            return
        if pipe is None:
            pipe = conn.pipe = Pipeline()
        await pipe.slots.acquire()
        conn.pipe = pipe  # dropped meanwhile if everything finished: the same one, now empty
        key = _chain_key(frame)
        conn.busy += 1
        queue = pipe.chains.get(key)
        if queue is not None:  # the chain's task runs it in its turn (chains.run_chain)
            queue.append((frame, start))
            return
        queue = pipe.chains[key] = deque(((frame, start),))
        task = asyncio.get_running_loop().create_task(run_chain(self, conn, pipe, key, queue))
        pipe.tasks.add(task)

    def bad_frame(self, conn: Conn, frame: object) -> None:
        """A frame that is not a JSON object: an ``error`` frame (no id to answer)."""
        # Garbage counts against the rate limit too (a flood of it gets RATE_LIMITED).
        if not conn.bucket.take():
            self.metrics.commands.labels("-", "RATE_LIMITED").inc()
            conn.send(envelopes.error_frame(ErrorCode.RATE_LIMITED, self._rate_message))
            return
        if frame is INVALID:
            self.metrics.commands.labels("-", "invalid_json").inc()
            conn.send(envelopes.error_frame(ErrorCode.VALIDATION_ERROR, "invalid JSON"))
        else:
            self.metrics.commands.labels("-", "not_object").inc()
            conn.send(
                envelopes.error_frame(ErrorCode.VALIDATION_ERROR, "a frame must be a JSON object")
            )

    async def on_command(self, conn: Conn, frame: dict[str, Any], start: float) -> None:
        """One command (a JSON object): look its route up, answer it here or relay it to the
        service that handles it; reply exactly once if it has an id."""
        cmd = self.admit(conn, frame, start)
        if cmd is None:
            return
        if cmd.error is not None:
            self.answer(conn, cmd, cmd.error)
            return
        await self.relay(conn, cmd)

    def admit(self, conn: Conn, frame: dict[str, Any], start: float) -> Command | None:
        """The checks every command passes before its route runs (id, event, fields, rate
        limit, sender kind, data): the command, with ``error`` (its reply envelope, not sent
        yet) when it failed them; None for an invalid id (answered: an ``error`` frame)."""
        cmd_id = frame.get("id")
        if cmd_id is not None and not envelopes.is_command_id(cmd_id):
            conn.send(
                envelopes.error_frame(
                    ErrorCode.VALIDATION_ERROR,
                    "id must be a string of 1-128 characters or an integer",
                    {"field": "id"},
                )
            )
            return None
        name = frame.get("event")
        reply_event = name if isinstance(name, str) and len(name) <= 64 else Event.ERROR.value
        route = route_of(name)
        label = route.event.value if route is not None else "unknown"
        cmd = Command(cmd_id, reply_event, label, start, route)
        try:
            if route is None:
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
            if not route.may_send(conn.principal.kind):
                raise ParleyError(
                    ErrorCode.FORBIDDEN,
                    f"a {conn.principal.kind.value} may not send {route.event.value}",
                )
            data = frame.get("data")
            if data is None:
                data = {}
            elif not isinstance(data, dict):
                raise ParleyError(
                    ErrorCode.VALIDATION_ERROR, "data must be a JSON object", {"field": "data"}
                )
        except ParleyError as exc:
            cmd.error = envelopes.fail_from(exc)
            return cmd
        cmd.data = data
        return cmd

    async def relay(self, conn: Conn, cmd: Command) -> None:
        """An admitted command: its route run (here, or by its service), then answered."""
        assert cmd.route is not None
        try:
            envelope = await self.dispatch(conn, cmd.route, cmd.data, key=cmd.key)
        except ParleyError as exc:
            envelope = envelopes.fail_from(exc)
        except Exception:
            logger.exception("command %s failed", cmd.label)
            envelope = envelopes.fail(ErrorCode.INTERNAL_ERROR, "internal error")
        self.answer(conn, cmd, envelope)

    def answer(self, conn: Conn, cmd: Command, envelope: dict[str, Any] | None) -> None:
        """A command's outcome: counted, and its reply if it has an id (an error without an
        id: an ``error`` frame). ``None``: a success without data (no envelope unless a
        reply is due)."""
        label, cmd_id = cmd.label, cmd.cmd_id
        if envelope is None:
            self.metrics.commands.labels(label, "ok").inc()
            self.metrics.command_latency.labels(label).observe(time.perf_counter() - cmd.start)
            if cmd_id is not None:
                conn.send(envelopes.reply_frame(cmd.reply_event, cmd_id, envelopes.ok(None)))
            return
        outcome = "ok" if envelope["success"] else str(envelope["error"]["code"])
        self.metrics.commands.labels(label, outcome).inc()
        self.metrics.command_latency.labels(label).observe(time.perf_counter() - cmd.start)
        if cmd_id is not None:
            conn.send(envelopes.reply_frame(cmd.reply_event, cmd_id, envelope))
        elif not envelope["success"]:
            conn.send({"event": Event.ERROR.value, **envelope})

    async def dispatch(
        self, conn: Conn, route: Route, data: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any] | None:
        """The reply envelope of a command; ``None`` for a success with ``data: null``.
        ``key``: the idempotency key it was sent with before (in a batch: chains.py).

        A command the gateway handles (``_LOCAL``: its own routes, and the join it wraps) is
        validated here; any other is relayed to its route's subject as it came, and the
        service that handles it validates it (the authority; once)."""
        local = _LOCAL.get(route.event)
        if local is not None:
            return await local(self, conn, route.parse(data))
        body = self.hub.command_body(conn.principal, data)
        if route.writes:
            # A writing command carries an idempotency key, so that a retry (Hub.request, on
            # another replica) is applied once: the client's clientMessageId for a message,
            # else one made here.
            cmid = data.get("clientMessageId") if route.event is Event.MESSAGE_SEND else None
            if key is None:
                key = cmid if isinstance(cmid, str) and cmid else new_id("idem")
            body["idempotencyKey"] = key
        # A write of one conversation goes to its partition's subject: straight to the
        # replica that owns it (docs/affinity.md); with no owner (dead, or moving), to any.
        return await self.hub.request(route.subject_for(data), body, fallback=route.subject)

    async def _join(self, conn: Conn, cmd: ConversationJoin) -> dict[str, Any] | None:
        return await self.join(conn, cmd.conversation_id, cmd.since_seq)

    async def _leave(self, conn: Conn, cmd: ConversationLeave) -> dict[str, Any] | None:
        # Watching, not membership (Socket.IO room semantics): unsubscribe this
        # connection and nothing else. Quitting is conversation:update removing oneself.
        cid = cmd.conversation_id
        await self.hub.leave(conn, cid)
        return envelopes.ok({"conversationId": cid, "watching": False})

    async def _typing(self, conn: Conn, cmd: Typing, event: Event) -> dict[str, Any] | None:
        cid = cmd.conversation_id
        if cid not in conn.joined:
            # Joined = a current participant: a removal evicts the connection (hub.evict).
            raise ParleyError(
                ErrorCode.FORBIDDEN,
                "not joined: join the conversation (as a participant) before typing events",
            )
        p = conn.principal
        payload = {"conversationId": cid, "principalId": p.id, "kind": p.kind.value, "name": p.name}
        # Everyone in the conversation but the sending connection (origin header).
        frame = envelopes.event_frame(event, payload, conversation_id=cid)
        await self.hub.publish(cid, frame, origin=conn.session_id)
        return None

    async def _typing_start(self, conn: Conn, cmd: Typing) -> dict[str, Any] | None:
        return await self._typing(conn, cmd, Event.TYPING_START)

    async def _typing_stop(self, conn: Conn, cmd: Typing) -> dict[str, Any] | None:
        return await self._typing(conn, cmd, Event.TYPING_STOP)

    async def _presence(self, conn: Conn, cmd: Presence, online: bool) -> dict[str, Any] | None:
        for cid in list(conn.joined):
            await self.hub.publish_presence(conn, cid, online=online, status=cmd.status)
        return envelopes.ok({"conversations": len(conn.joined)})

    async def _presence_online(self, conn: Conn, cmd: Presence) -> dict[str, Any] | None:
        return await self._presence(conn, cmd, True)

    async def _presence_offline(self, conn: Conn, cmd: Presence) -> dict[str, Any] | None:
        return await self._presence(conn, cmd, False)


# The commands the gateway answers itself, by route: every Service.GATEWAY route, and
# conversation:join (the service authorizes it; the gateway subscribes and replays).
LocalHandler = Callable[[Commands, Conn, Any], Awaitable[dict[str, Any] | None]]
_LOCAL: dict[Event, LocalHandler] = {
    Event.CONVERSATION_JOIN: Commands._join,
    Event.CONVERSATION_LEAVE: Commands._leave,
    Event.TYPING_START: Commands._typing_start,
    Event.TYPING_STOP: Commands._typing_stop,
    Event.PRESENCE_ONLINE: Commands._presence_online,
    Event.PRESENCE_OFFLINE: Commands._presence_offline,
}
assert {e for e, r in ROUTES.items() if r.service is Service.GATEWAY} <= set(_LOCAL), (
    "every gateway route needs a handler here"
)
