"""Presence: this instance's principals.

- Each principal with a connection here has one subscription to its own events
  (``principal_events``) shared by its connections, and a presence KV entry
  ``<kind>.<id>.<instance>`` holding its connection count here, with a TTL refreshed every
  ``presence_ttl_seconds / 3`` (with the instance's heartbeat: parley_gateway.instances,
  which also reaps vanished instances and says what happens without the buckets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Gauge

from parley_contract import subjects
from parley_contract.events import PrincipalKind
from parley_gateway.conn import Conn, frame_text
from parley_gateway.instances import _KV_ERRORS, KV_WRITE_SECONDS, Instances
from parley_gateway.metrics import Metrics
from parley_gateway.natsdirect import subscribe_later
from parley_gateway.settings import Settings

logger = logging.getLogger(__name__)


class PrincipalState:
    __slots__ = ("conns", "sub")

    def __init__(self) -> None:
        self.conns: set[Conn] = set()
        self.sub: Subscription | None = None


class Presence(Instances):
    """This instance's principals, their presence entries and the instances' heartbeats."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        # Keyed by (kind, id): the user ``x`` and the agent ``x`` are two principals.
        self.principals: dict[tuple[PrincipalKind, str], PrincipalState] = {}
        # The connections gauge's child per kind, looked up once (labels() per connect costs
        # more than the inc; made on first use: no series before its first connection).
        self._connected: dict[PrincipalKind, Gauge] = {}

    async def register(self, conn: Conn) -> None:
        kind, pid = conn.principal.kind, conn.principal.id
        state = self.principals.get((kind, pid))
        if state is None:
            state = PrincipalState()
            self.principals[(kind, pid)] = state
            assert self.nc is not None
            # Its SUB goes out with the presence and session puts below (one socket write
            # for all the connects of a publish window, not one each).
            state.sub, command = subscribe_later(
                self.nc, subjects.principal_events(kind, pid), self._principal_handler(state)
            )
            self.command_soon(command)
        state.conns.add(conn)
        self.sessions[conn.session_id] = conn
        self._connected_gauge(conn.principal.kind).inc()
        # Not acknowledged: the client gets ``connected`` without waiting for JetStream, and
        # the presence refresh (every presenceTtl/3) writes it again.
        await self._put_presence(conn.principal.kind, pid, len(state.conns), ack=False)

    def _connected_gauge(self, kind: PrincipalKind) -> Gauge:
        gauge = self._connected.get(kind)
        if gauge is None:
            gauge = self._connected[kind] = self.metrics.connections.labels(kind.value)
        return gauge

    def _principal_handler(self, state: PrincipalState) -> Callable[[Msg], None]:
        def on_msg(msg: Msg) -> None:
            self.metrics.events_in.labels("principal").inc()
            wire = frame_text(msg.data)
            for conn in list(state.conns):
                conn.push_frame(wire)

        return on_msg

    async def unregister(self, conn: Conn) -> None:
        kind, pid = conn.principal.kind, conn.principal.id
        for cid in list(conn.joined):
            try:
                # A kicked connection's session goes on elsewhere: not offline (the resume
                # there, which read no offline mark, announces nothing either: Restored).
                await self.leave(conn, cid, announce=not conn.kicked)
            except nats.errors.Error:
                logger.warning("leave %s on disconnect failed", cid, exc_info=True)
        if self.sessions.get(conn.session_id) is conn:
            del self.sessions[conn.session_id]
        self.dirty.discard(conn)
        self._connected_gauge(conn.principal.kind).dec()
        state = self.principals.get((kind, pid))
        if state is not None:
            state.conns.discard(conn)
            if not state.conns:
                del self.principals[(kind, pid)]
                # state -> sub -> its handler -> state: a cycle; broken here, the state and
                # its subscription are freed now, not by the cyclic GC's pauses.
                sub, state.sub = state.sub, None
                if sub is not None:
                    await self.flush_publishes()  # its SUB first, if that still waits
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()
                with contextlib.suppress(*_KV_ERRORS):  # bounded: a resume waits for this
                    assert self.kv_presence is not None
                    await self.flush_publishes()  # the connect's put first
                    await asyncio.wait_for(
                        self.kv_presence.delete(self._presence_key(conn.principal.kind, pid)),
                        KV_WRITE_SECONDS,
                    )
            else:
                await self._put_presence(conn.principal.kind, pid, len(state.conns))

    # ------------------------------------------------------------------ presence

    def _presence_key(self, kind: PrincipalKind, pid: str) -> str:
        return f"{kind.value}.{pid}.{self.instance_id}"

    async def _put_presence(
        self, kind: PrincipalKind, pid: str, count: int, *, ack: bool = True
    ) -> None:
        if self.kv_presence is None:
            return
        if not ack:
            self.kv_publish_soon(
                subjects.KV_PRESENCE, self._presence_key(kind, pid), str(count).encode()
            )
            return
        try:
            await self.flush_publishes()  # an older unacknowledged put must not win
            await asyncio.wait_for(
                self.kv_presence.put(self._presence_key(kind, pid), str(count).encode()),
                KV_WRITE_SECONDS,
            )
        except _KV_ERRORS as exc:
            logger.warning("presence of %s not saved: %s", pid, exc)

    async def _refresh_presence(self) -> None:
        try:
            await self._put_instance()
        except _KV_ERRORS as exc:
            logger.warning("heartbeat of %s not written: %r", self.instance_id, exc)
        # Not acknowledged, as at register: a lost put is written again by the next refresh,
        # twice more within the TTL. 5,000 acknowledged puts (a reply inbox and a future
        # each) cost a gateway ~0.2 s of CPU per refresh, in a reconnect storm too.
        for (kind, pid), state in list(self.principals.items()):
            if state.conns:
                await self._put_presence(kind, pid, len(state.conns), ack=False)
        await self._watch_instances()
