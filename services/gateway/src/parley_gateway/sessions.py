"""Sessions: what a client may resume (its conversations and the last seq delivered in each).

A session is a JetStream KV entry (``subjects.KV_SESSIONS``) written by the gateway that holds
the connection: unacknowledged every ``session_flush_seconds`` for the sessions whose
delivered seqs changed (``dirty``), acknowledged on close and on every refresh (TTL). A resume
on another gateway kicks the old connection (``gateway_session_kick``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from parley_contract import jsonutil, subjects
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.internal import Principal
from parley_contract.timeutil import now_iso
from parley_gateway import openclock
from parley_gateway.bus import Bus
from parley_gateway.conn import CLOSE_POLICY, Conn
from parley_gateway.metrics import Metrics
from parley_gateway.natsdirect import subscribe_direct
from parley_gateway.settings import Settings

logger = logging.getLogger(__name__)

FLUSH_BATCH = 500  # session writes per flush tick at most (2000/s at the default 0.25 s)
# Reading a session on resume: attempts of at most LOAD_ATTEMPT_SECONDS each (a leader
# election of the bucket takes a few seconds) within LOAD_BUDGET_SECONDS, then the store is
# unavailable (issue 19: before, a resume waited 5 s and silently got a fresh session).
LOAD_ATTEMPT_SECONDS = 1.0
LOAD_BUDGET_SECONDS = 3.0
# Session reads in flight at once (a reconnect storm: thousands of resumes arrive together).
# The others wait for a slot before their budget starts: 5,000 reads at once all progressed
# together through a busy event loop, and every one ran out of its budget (503) with the
# bucket answering all along (issue 16, docs/benchmarks.md "Reconnect storm").
LOAD_CONCURRENCY = 64
# After a read that found the bucket unavailable, the reads waiting for a slot within this
# long fail at once (503) instead of each waiting out its own budget behind the others.
UNAVAILABLE_HOLD_SECONDS = 1.0
# The longest a resume waits for a session-read slot (503 ``sessions-busy`` then: resume
# again). The handshake's open timer is paused meanwhile (openclock.py): the wait is the
# server's, not the client's, and in a storm under load it took longer than that timer.
QUEUE_SECONDS = 30.0
SAVE_SECONDS = 1.5  # an acknowledged session write (the TTL refresh, a drain)
# The offline-marked save at a close: its presence:offline goes out after it (server
# ._cleanup), so that a resume elsewhere that saw the offline reads the mark and says online
# (Restored). A slow JetStream (a starved box) is waited for this long; only a bucket that
# does not answer by then lets the offline events go without the mark. A resume on this
# instance waits SAVE_SECONDS of it at most (then kicks: nothing announced either way).
OFFLINE_SAVE_SECONDS = 5.0


class SinceOnly(dict[str, int]):
    """A resume restored from the client's ``since`` alone (the session could not be read)."""


class Restored(dict[str, int]):
    """A saved session's conversations (cid → last seq delivered), and ``carried``: those
    in which the other members were never told it went offline (docs/protocol.md 3.5,
    Presence): no ``offline`` mark in the session, so its previous connection is still open
    (it is kicked, and a kicked connection announces nothing) or vanished with its gateway
    before that gateway's clients were reaped. A rejoin of a carried conversation publishes
    no ``presence:online``: for the others it never went away (issue 16, the storm)."""

    def __init__(self, convs: dict[str, int], carried: frozenset[str] = frozenset()) -> None:
        super().__init__(convs)
        self.carried = carried


class SessionsUnavailable(ParleyError):
    """The sessions bucket did not answer: a resume cannot know the session's conversations."""

    def __init__(self) -> None:
        super().__init__(
            ErrorCode.SERVICE_UNAVAILABLE,
            "sessions cannot be read right now: resume again in a few seconds, "
            "or resume with since",
            {"reason": "sessions-unavailable"},
        )


class SessionsBusy(ParleyError):
    """A resume waited ``QUEUE_SECONDS`` for a session-read slot: the instance is swamped."""

    def __init__(self) -> None:
        super().__init__(
            ErrorCode.SERVICE_UNAVAILABLE,
            "too many sessions are being resumed here right now: resume again in a few seconds",
            {"reason": "sessions-busy"},
        )


class Sessions(Bus):
    """The sessions of this instance's connections, kept in KV."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self.sessions: dict[str, Conn] = {}
        # Sessions whose connection is being cleaned up (left, saved): a resume waits for it.
        self.cleaning: dict[str, asyncio.Future[None]] = {}
        self.dirty: set[Conn] = set()
        self.draining = False
        self._kick_sub: Subscription | None = None
        self._loads = asyncio.Semaphore(LOAD_CONCURRENCY)
        self._unavailable_at = -UNAVAILABLE_HOLD_SECONDS  # monotonic time of the last failure

    async def listen_kicks(self) -> None:
        assert self.nc is not None
        # Direct (natsdirect: no queue and task per message): in a reconnect storm every
        # gateway receives every resume's kick (10,000), and the handler never awaits.
        self._kick_sub = await subscribe_direct(
            self.nc, subjects.GATEWAY_SESSION_KICK_WILDCARD, self._on_kick
        )

    def session_doc(
        self, conn: Conn, joined: dict[str, int] | None = None, *, offline: bool = False
    ) -> bytes:
        doc: dict[str, object] = {
            "principal": conn.principal.wire(),
            "conversations": dict(conn.joined if joined is None else joined),
            "instanceId": self.instance_id,
            "updatedAt": now_iso(),
        }
        if offline:  # its offline events are published (Restored: a resume says online)
            doc["offline"] = True
        return jsonutil.dumps(doc)

    async def save_session(
        self,
        conn: Conn,
        joined: dict[str, int] | None = None,
        *,
        ack: bool = True,
        offline: bool = False,
    ) -> None:
        """Write the session to the KV; ``ack=False``: a plain publish, no round trip.
        ``offline``: the connection is closed and its ``presence:offline`` published.

        A closing connection's session is written by its cleanup alone (``offline``), not
        by a refresh or flush that listed it before: that would write over the offline
        mark, after the leave without the conversations."""
        kv = self.kv_sessions
        if kv is None or self._not_saved(conn, offline):
            return
        if not ack:
            doc = self.session_doc(conn, joined, offline=offline)
            self.kv_publish_soon(subjects.KV_SESSIONS, conn.session_id, doc)
            return
        try:  # bounded: a resume waits for the save at a disconnect (server.resume)
            await self.flush_publishes()  # an older unacknowledged save must not win
            if self._not_saved(conn, offline):  # closed meanwhile
                return
            doc = self.session_doc(conn, joined, offline=offline)
            bound = OFFLINE_SAVE_SECONDS if offline else SAVE_SECONDS
            await asyncio.wait_for(kv.put(conn.session_id, doc), bound)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            logger.warning("session %s not saved: %s", conn.session_id, exc)

    def _not_saved(self, conn: Conn, offline: bool) -> bool:
        return conn.kicked or (conn.closing and not offline)

    async def load_session(self, session_id: str, principal: Principal) -> Restored | None:
        """The conversations (cid → last seq delivered) of a session of this principal;
        None: no such session (or someone else's). Raises :class:`SessionsUnavailable` when
        the sessions bucket does not answer within ``LOAD_BUDGET_SECONDS``."""
        entry = await self._read_session(session_id)
        if entry is None:
            return None
        try:
            doc = jsonutil.loads(entry)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        owner = doc.get("principal") or {}
        if owner.get("id") != principal.id or owner.get("kind") != principal.kind.value:
            return None
        convs = doc.get("conversations") or {}
        if not isinstance(convs, dict):
            return None
        restored = {str(k): int(v) for k, v in convs.items() if isinstance(v, int)}
        return Restored(restored, frozenset() if doc.get("offline") else frozenset(restored))

    async def _read_session(self, session_id: str) -> bytes | None:
        if self.kv_sessions is None:
            raise SessionsUnavailable()
        if self._loads.locked():  # no free slot: wait, bounded by QUEUE_SECONDS only
            try:
                async with openclock.paused(), asyncio.timeout(QUEUE_SECONDS):
                    await self._loads.acquire()
            except TimeoutError:
                raise SessionsBusy() from None
        else:
            await self._loads.acquire()  # at once
        try:
            if time.monotonic() - self._unavailable_at < UNAVAILABLE_HOLD_SECONDS:
                raise SessionsUnavailable()
            return await self._read_session_now(session_id)
        finally:
            self._loads.release()

    async def _read_session_now(self, session_id: str) -> bytes | None:
        assert self.kv_sessions is not None
        deadline = time.monotonic() + LOAD_BUDGET_SECONDS
        while True:
            left = deadline - time.monotonic()
            try:
                entry = await asyncio.wait_for(
                    self.kv_sessions.get(session_id), min(LOAD_ATTEMPT_SECONDS, max(left, 0.1))
                )
                return entry.value or b""
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                if time.monotonic() + 0.2 >= deadline:
                    logger.warning("session %s not loaded: %r", session_id, exc)
                    self.metrics.kv_unavailable.labels(subjects.KV_SESSIONS).inc()
                    self._unavailable_at = time.monotonic()
                    raise SessionsUnavailable() from None
                await asyncio.sleep(0.2)

    async def kick(self, session_id: str) -> None:
        """Tell whichever instance still holds this session that it was resumed elsewhere."""
        old = self.sessions.get(session_id)
        if old is not None:
            old.kicked = True
            old.close(CLOSE_POLICY, "session resumed on another connection")
        assert self.nc is not None
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(
                subjects.gateway_session_kick(session_id),
                jsonutil.dumps({"sessionId": session_id, "instanceId": self.instance_id}),
            )

    def _on_kick(self, msg: Msg) -> None:
        try:
            body = jsonutil.loads(msg.data)
        except ValueError:
            return
        if not isinstance(body, dict) or body.get("instanceId") == self.instance_id:
            return
        conn = self.sessions.get(str(body.get("sessionId")))
        if conn is not None:
            conn.kicked = True
            conn.close(CLOSE_POLICY, "session resumed on another connection")

    async def flush(self) -> None:
        """Write the delivered seqs of changed sessions (crash resume loses at most this much)."""
        if not self.dirty:
            return
        if len(self.dirty) <= FLUSH_BATCH:
            batch, self.dirty = list(self.dirty), set()
        else:  # bounded KV load under heavy traffic: the rest waits for the next tick
            batch = [self.dirty.pop() for _ in range(FLUSH_BATCH)]
        # One unacknowledged KV write per changed session per interval, all handed to the
        # NATS client in one go (one socket write), no reply inbox or future per write.
        for conn in batch:
            if not conn.closing:
                await self.save_session(conn, ack=False)

    async def _refresh_sessions(self) -> None:
        conns = list(self.sessions.values())
        for i in range(0, len(conns), 200):
            await asyncio.gather(*(self.save_session(c) for c in conns[i : i + 200]))

    # ------------------------------------------------------------------ drain

    async def drain_connections(self, seconds: float) -> None:
        """Close every client with 1001, spread over ``seconds``, after in-flight commands.

        Up to 20 batches a second; in a batch each connection finishes its command in flight
        (at most 2 s), its session is saved, then it is closed.
        """
        conns = list(self.sessions.values())
        random.shuffle(conns)
        await self.flush()
        if not conns:
            return
        ticks = max(1, min(len(conns), int(seconds * 20)))
        per = -(-len(conns) // ticks)
        interval = seconds / ticks
        for i in range(0, len(conns), per):
            await asyncio.gather(*(self._drain_one(c) for c in conns[i : i + per]))
            if interval and i + per < len(conns):
                await asyncio.sleep(interval)

    async def _drain_one(self, conn: Conn) -> None:
        deadline = time.monotonic() + 2.0
        while conn.busy and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await self.save_session(conn)
        conn.close(1001, "server draining: reconnect with your session")
