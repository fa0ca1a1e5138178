"""Everything one gateway instance shares between its connections, over NATS.

- Interest-based fan-out: one NATS subscription per conversation that at least one local
  client has joined, dropped when the last one leaves. Each frame is parsed once (to read
  ``seq`` and ``event``) and the bytes the conversation service published are written verbatim
  to every local member.
- Ordering: a :class:`~parley_gateway.ordering.Sequencer` per conversation delivers durable
  events in ``seq`` order; a gap waits ``gap_wait_seconds``, then is filled from the store
  (QUERY_EVENTS_SINCE). Duplicates are dropped, per conversation and per connection.
- Live membership: every durable ``conversation:updated`` / ``conversation:deleted`` frame
  says who may still follow the conversation (``parley_contract.access``); a member it no
  longer admits gets that frame as its last one and is evicted at that ``seq``.
- Presence, instances and sessions live in JetStream KV buckets whose entries expire on their
  own (bucket TTL) unless refreshed, so a crashed instance's clients disappear by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from parley_contract import envelopes, jsonutil, nats_auth, subjects
from parley_contract.access import Audience, audience_change
from parley_contract.agents import AgentDirectory
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import EventsSinceRequest, Principal
from parley_contract.streams import turns_bucket
from parley_contract.timeutil import now_iso
from parley_contract.turnstate import TURN_EVENTS
from parley_gateway.conn import CLOSE_POLICY, Conn, frame_text
from parley_gateway.metrics import Metrics
from parley_gateway.natsdirect import subscribe_direct
from parley_gateway.ordering import Outcome, Sequencer
from parley_gateway.settings import Settings
from parley_gateway.turns import TurnTracker

logger = logging.getLogger(__name__)

FLUSH_BATCH = 500  # session writes per flush tick at most (2000/s at the default 0.25 s)
EVENTS_PAGE = 200  # events per QUERY_EVENTS_SINCE request (the service allows up to 1000)
# Ephemeral events this gateway publishes (typing, presence) wait at most this long so that
# the publishes of many commands share one socket write of the NATS client.
PUBLISH_WINDOW_SECONDS = 0.001
# Failover of service requests (see Hub.request): backoff between attempts, doubling, capped.
RETRY_FIRST_BACKOFF = 0.05
RETRY_MAX_BACKOFF = 0.4
TIMEOUT_MESSAGE = (
    "the service did not answer in time: the outcome is unknown (the command may or may "
    "not have been applied); sending it again with the same clientMessageId is safe"
)

_PRESENCE_EVENTS = {
    (PrincipalKind.USER, True): Event.PRESENCE_ONLINE,
    (PrincipalKind.USER, False): Event.PRESENCE_OFFLINE,
    (PrincipalKind.AGENT, True): Event.AGENT_ONLINE,
    (PrincipalKind.AGENT, False): Event.AGENT_OFFLINE,
}


class ConvState:
    """One subscribed conversation on this instance."""

    __slots__ = ("audience", "cid", "gap_task", "members", "ready", "refs", "seq", "sub", "turn")

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self.members: set[Conn] = set()
        self.refs = 0  # members + joins in progress
        self.seq = Sequencer()
        self.sub: Subscription | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gap_task: asyncio.Task[None] | None = None
        self.turn = TurnTracker()  # the running agent turn, for joiners (turns.py)
        # Who may follow the conversation after the last audience-changing frame delivered
        # here (None: none seen since this instance subscribed).
        self.audience: Audience | None = None


class PrincipalState:
    __slots__ = ("conns", "sub")

    def __init__(self) -> None:
        self.conns: set[Conn] = set()
        self.sub: Subscription | None = None


class Hub:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.instance_id = settings.instance_id
        self.nc: NATS | None = None
        self.kv_presence: KeyValue | None = None
        self.kv_instances: KeyValue | None = None
        self.kv_sessions: KeyValue | None = None
        self.kv_agents: KeyValue | None = None  # written by agent bridges, read here
        self.kv_turns: KeyValue | None = None  # running agent turns (turns.py)
        self._agents: AgentDirectory | None = None
        self.convs: dict[str, ConvState] = {}
        # Keyed by (kind, id): the user ``x`` and the agent ``x`` are two principals.
        self.principals: dict[tuple[PrincipalKind, str], PrincipalState] = {}
        self.sessions: dict[str, Conn] = {}
        # Sessions whose connection is being cleaned up (left, saved): a resume waits for it.
        self.cleaning: dict[str, asyncio.Future[None]] = {}
        self.dirty: set[Conn] = set()
        self.draining = False
        self.started_at = now_iso()
        self.service_principal = Principal(id=self.instance_id, kind=PrincipalKind.SERVICE)
        self._tasks: list[asyncio.Task[None]] = []
        self._kick_sub: Subscription | None = None
        self._seen_instances: set[str] = set()
        # Publishes waiting for the window: (subject, payload, NATS headers or None).
        self._outbox: list[tuple[str, bytes, dict[str, str] | None]] = []
        self._publishing: set[asyncio.Task[None]] = set()
        self._evicting: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def agents(self) -> AgentDirectory:
        """GET /v1/agents (after start)."""
        assert self._agents is not None
        return self._agents

    @property
    def ready(self) -> bool:
        return (
            not self.draining
            and self.nc is not None
            and self.nc.is_connected
            and self.kv_sessions is not None
        )

    async def start(self) -> None:
        delay = 0.2
        while True:
            try:
                self.nc = await nats.connect(
                    servers=[self.settings.nats_url],
                    name=f"parley-gateway {self.instance_id}",
                    inbox_prefix=nats_auth.inbox_prefix("gateway"),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=3,
                    error_cb=self._nats_error,
                    disconnected_cb=self._nats_disconnected,
                    reconnected_cb=self._nats_reconnected,
                )
                break
            except (OSError, nats.errors.Error) as exc:
                logger.warning("NATS not reachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        js = self.nc.jetstream()
        self._agents = AgentDirectory(js)
        self.kv_turns = await turns_bucket(js)
        self.kv_presence = await self._bucket(js, subjects.KV_PRESENCE, self._presence_ttl)
        self.kv_instances = await self._bucket(js, subjects.KV_INSTANCES, self._presence_ttl)
        self.kv_sessions = await self._bucket(
            js, subjects.KV_SESSIONS, self.settings.session_ttl_seconds
        )
        self._kick_sub = await self.nc.subscribe(
            subjects.GATEWAY_SESSION_KICK_WILDCARD, cb=self._on_kick
        )
        await self._put_instance()
        self._tasks = [
            asyncio.create_task(self._loop(self._presence_ttl / 3, self._refresh_presence)),
            asyncio.create_task(self._loop(self.settings.session_flush_seconds, self.flush)),
            asyncio.create_task(
                self._loop(self.settings.session_ttl_seconds / 3, self._refresh_sessions)
            ),
            asyncio.create_task(self._loop(self.settings.heartbeat_seconds, self._heartbeat)),
        ]
        logger.info("gateway %s connected to NATS %s", self.instance_id, self.settings.nats_url)

    async def _nats_error(self, exc: Exception) -> None:
        logger.warning("NATS: %s", exc or type(exc).__name__)

    async def _nats_disconnected(self) -> None:
        logger.warning("NATS disconnected; reconnecting (readyz is 503 meanwhile)")

    async def _nats_reconnected(self) -> None:
        logger.info("NATS reconnected")

    @property
    def _presence_ttl(self) -> float:
        return self.settings.presence_ttl_seconds

    async def _bucket(self, js: Any, name: str, ttl: float) -> KeyValue:
        for _ in range(5):
            try:
                kv: KeyValue = await js.key_value(name)
                return kv
            except nats.js.errors.BucketNotFoundError:
                pass
            try:
                kv = await js.create_key_value(KeyValueConfig(bucket=name, history=1, ttl=ttl))
                return kv
            except nats.js.errors.BadRequestError:
                await asyncio.sleep(0.1)  # created concurrently by another instance
        raise RuntimeError(f"cannot open KV bucket {name}")

    async def _loop(self, interval: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("periodic task %s failed", getattr(fn, "__name__", fn))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.flush()
        await self._flush_publishes()
        if self.kv_instances is not None:
            with contextlib.suppress(Exception):
                await self.kv_instances.delete(self.instance_id)
        if self.kv_presence is not None:
            for (kind, pid), state in list(self.principals.items()):
                if state.conns:
                    with contextlib.suppress(Exception):
                        await self.kv_presence.delete(self._presence_key(kind, pid))
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    # ------------------------------------------------------------------ requests

    async def request(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        """A NATS request to a Parley service; the reply envelope (ok/fail).

        Failover (issue 11): a request nobody answered (the replica died with it in flight,
        or no replica is subscribed right now) is sent again, the same bytes (so the same
        idempotency key), with short per-attempt timeouts (``attempt_timeout_seconds``,
        doubling) and a capped backoff, all within ``request_timeout_seconds``. A queue group
        hands the retry to a live replica: NATS drops a dead replica's subscriptions as soon
        as its connection closes. A reply, even an error, is never retried.
        """
        payload = jsonutil.dumps(body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_seconds
        attempt_timeout = self.settings.attempt_timeout_seconds
        backoff = RETRY_FIRST_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            nc = self.nc
            if nc is None or not nc.is_connected:
                return envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "message bus unavailable")
            remaining = deadline - loop.time()
            try:
                msg = await nc.request(subject, payload, timeout=min(attempt_timeout, remaining))
                break
            except nats.errors.NoRespondersError:
                failure = envelopes.fail(
                    ErrorCode.SERVICE_UNAVAILABLE, "service unavailable, retry"
                )
            except nats.errors.TimeoutError:
                failure = envelopes.fail(
                    ErrorCode.TIMEOUT, TIMEOUT_MESSAGE, {"outcomeUnknown": True}
                )
            except nats.errors.Error as exc:
                logger.warning("NATS request on %s failed: %s", subject, exc)
                return envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "message bus unavailable")
            if deadline - loop.time() <= backoff:
                if attempt > 1:
                    self.metrics.request_retries.labels("gave_up").inc()
                return failure
            self.metrics.request_retries.labels("retried").inc()
            logger.info("no answer on %s (attempt %d): retrying", subject, attempt)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_BACKOFF)
            attempt_timeout *= 2
        try:
            reply = jsonutil.loads(msg.data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or not isinstance(reply.get("success"), bool):
            logger.error("malformed reply on %s: %r", subject, msg.data[:200])
            return envelopes.fail(ErrorCode.INTERNAL_ERROR, "malformed service reply")
        return reply

    def command_body(self, principal: Principal, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "principal": principal.model_dump(mode="json"),
            "data": data,
            "instanceId": self.instance_id,
        }

    async def events_since(
        self, principal: Principal, cid: str, after: int, until: int | None
    ) -> list[tuple[int, bytes]]:
        """Durable frames of a conversation with after < seq <= until (all pages), in order."""
        out: list[tuple[int, bytes]] = []
        async for page in self.event_pages(principal, cid, after, until):
            out.extend(page)
        return out

    async def event_pages(
        self, principal: Principal, cid: str, after: int, until: int | None
    ) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Pages of (seq, frame bytes) with after < seq <= until, in order, from the store.

        A page that times out is asked again smaller (a reply over the NATS max payload
        never arrives): EVENTS_PAGE, then /10, then 1 event at a time.
        """
        limit = EVENTS_PAGE
        while True:
            req = EventsSinceRequest(
                principal=principal,
                conversation_id=cid,
                after_seq=after,
                until_seq=until,
                limit=limit,
            )
            reply = await self.request(
                subjects.QUERY_EVENTS_SINCE, req.model_dump(mode="json", by_alias=True)
            )
            if not reply["success"]:
                err = reply.get("error") or {}
                code = err.get("code", ErrorCode.INTERNAL_ERROR.value)
                if code == ErrorCode.TIMEOUT.value and limit > 1:
                    limit = max(1, limit // 10)
                    continue
                raise ParleyError(ErrorCode(code), str(err.get("message", "events query failed")))
            data = reply.get("data") or {}
            frames = data.get("events") or []
            page: list[tuple[int, bytes]] = []
            for frame in frames:
                seq = frame.get("seq") if isinstance(frame, dict) else None
                if isinstance(seq, int) and seq > after and (until is None or seq <= until):
                    page.append((seq, jsonutil.dumps(frame)))
            page.sort(key=lambda p: p[0])
            if not page:
                return
            yield page
            after = page[-1][0]
            last_seq = data.get("lastSeq")
            target = until if until is not None else last_seq
            if not isinstance(target, int) or after >= target:
                return

    # ------------------------------------------------------------------ conversations

    async def acquire(self, cid: str) -> ConvState:
        """Subscribe (once per instance) to a conversation; the caller must ``release``."""
        conv = self.convs.get(cid)
        if conv is None:
            conv = ConvState(cid)
            self.convs[cid] = conv
            conv.refs += 1
            try:
                assert self.nc is not None
                conv.sub = await subscribe_direct(
                    self.nc, subjects.conversation_feed(cid), self._conv_handler(conv)
                )
                await self.nc.flush()
                await conv.turn.load(self.kv_turns, cid)  # after subscribing: no gap
            except BaseException as exc:
                conv.refs -= 1
                self.convs.pop(cid, None)
                conv.ready.set_exception(exc)
                conv.ready.exception()  # retrieved: nobody else may wait
                raise
            conv.ready.set_result(None)
            self.metrics.subscriptions.set(len(self.convs))
            return conv
        conv.refs += 1
        try:
            await asyncio.shield(conv.ready)
        except BaseException:
            conv.refs -= 1
            raise
        return conv

    async def release(self, conv: ConvState) -> None:
        conv.refs -= 1
        if conv.refs > 0 or self.convs.get(conv.cid) is not conv:
            return
        del self.convs[conv.cid]
        self.metrics.subscriptions.set(len(self.convs))
        if conv.gap_task is not None:
            conv.gap_task.cancel()
        if conv.sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await conv.sub.unsubscribe()

    def _conv_handler(self, conv: ConvState) -> Callable[[Msg], None]:
        def on_msg(msg: Msg) -> None:
            headers = msg.headers
            origin = headers.get(subjects.HEADER_ORIGIN) if headers else None
            ephemeral = subjects.is_ephemeral_subject(msg.subject)
            self.on_conversation_frame(conv, msg.data, origin, ephemeral_only=ephemeral)

        return on_msg

    def on_conversation_frame(
        self,
        conv: ConvState,
        data: bytes,
        origin: str | None = None,
        *,
        ephemeral_only: bool = False,
    ) -> None:
        """One frame of a conversation's subjects. ``origin``: the session id of the connection
        that caused an ephemeral event (typing), which does not get it back.
        ``ephemeral_only``: it came on the ephemeral subject, which gateways and bridges may
        publish to: a frame with a seq there is forged and dropped."""
        try:
            frame = jsonutil.loads(data)
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
            self.metrics.drops.labels("bad_frame").inc()
            logger.warning("dropping malformed frame on conversation %s", conv.cid)
            return
        if frame["event"] in TURN_EVENTS:
            conv.turn.on_frame(frame["event"], frame.get("data"))
        seq = frame.get("seq")
        if ephemeral_only and "seq" in frame:
            self.metrics.drops.labels("bad_frame").inc()
            logger.warning("dropping a frame with a seq on %s's ephemeral subject", conv.cid)
            return
        if not isinstance(seq, int):
            self.metrics.events_in.labels("ephemeral").inc()
            wire = frame_text(data)  # framed once, the same bytes for every member
            for conn in list(conv.members):
                if origin is None or conn.session_id != origin:
                    conn.push_frame(wire)
            return
        self.metrics.events_in.labels("durable").inc()
        epoch = frame.get("epoch", 0)
        out = conv.seq.push(seq, data, epoch if isinstance(epoch, int) else 0)
        if out.reset:
            # Members' delivered positions belong to the old epoch (docs/protocol.md).
            logger.warning("conversation %s: epoch %d begins at seq %d", conv.cid, epoch, seq)
            for conn in conv.members:
                conn.joined[conv.cid] = seq - 1
        self._apply(conv, out)

    def _apply(self, conv: ConvState, out: Outcome) -> None:
        if out.duplicate:
            self.metrics.drops.labels("duplicate").inc()
        for seq, frame in out.deliver:
            self.deliver(conv, seq, frame)
        if conv.seq.pending and conv.gap_task is None:
            conv.gap_task = asyncio.create_task(
                self._fill_gap(conv, 0.0 if out.gap else self.settings.gap_wait_seconds)
            )

    def deliver(self, conv: ConvState, seq: int, frame: bytes) -> None:
        cid = conv.cid
        wire: bytes | None = None
        for conn in list(conv.members):
            if conn.joined.get(cid, 0) >= seq:
                self.metrics.drops.labels("duplicate").inc()
                continue
            conn.joined[cid] = seq
            self.dirty.add(conn)
            if wire is None:
                wire = frame_text(frame)  # framed once, the same bytes for every member
            conn.push_frame(wire)
        audience = audience_change(frame)
        if audience is not None:
            conv.audience = audience
            for conn in list(conv.members):
                if not audience.admits(conn.principal.kind, conn.principal.id):
                    self.evict(conn, conv)

    def evict(self, conn: Conn, conv: ConvState) -> None:
        """``conn`` may no longer follow ``conv``: nothing more of it reaches the client.

        Synchronous (called while delivering, before the next frame): out of the members and
        of the connection's joined conversations at once; the subscription is released and
        the principal's ``presence:offline`` published in the background.
        """
        conv.members.discard(conn)
        conn.joined.pop(conv.cid, None)
        self.dirty.add(conn)
        self.metrics.evictions.inc()
        logger.info("%r evicted from conversation %s", conn, conv.cid)
        task = asyncio.get_running_loop().create_task(self._after_evict(conn, conv))
        self._evicting.add(task)
        task.add_done_callback(self._evicting.discard)

    async def _after_evict(self, conn: Conn, conv: ConvState) -> None:
        key = (conn.principal.kind, conn.principal.id)
        if not any((m.principal.kind, m.principal.id) == key for m in conv.members):
            await self.publish_presence(conn, conv.cid, online=False)
        try:
            await self.release(conv)
        except nats.errors.Error:
            logger.warning("release of %s after an eviction failed", conv.cid, exc_info=True)

    async def _fill_gap(self, conv: ConvState, wait: float) -> None:
        try:
            if wait:
                await asyncio.sleep(wait)
            attempts = 0
            while (gap := conv.seq.missing()) is not None:
                after, until = gap
                self.metrics.gap_fills.inc()
                logger.info("conversation %s: filling gap (%d, %d]", conv.cid, after, until)
                try:
                    frames = await self.events_since(self.service_principal, conv.cid, after, until)
                except ParleyError as exc:
                    logger.warning("gap fill for %s failed: %s", conv.cid, exc)
                    frames = []
                out = conv.seq.fill(frames)
                for seq, frame in out.deliver:
                    self.deliver(conv, seq, frame)
                if conv.seq.missing() == gap:
                    attempts += 1
                    if attempts >= 3:
                        logger.error(
                            "conversation %s: seq (%d, %d] unavailable; skipping",
                            conv.cid,
                            after,
                            until,
                        )
                        self.metrics.drops.labels("skipped_gap").inc(until - after)
                        skipped = conv.seq.skip_to(until)
                        for seq, frame in skipped.deliver:
                            self.deliver(conv, seq, frame)
                    else:
                        await asyncio.sleep(0.2 * attempts)
        finally:
            conv.gap_task = None

    async def join(
        self, conn: Conn, cid: str, since: int | None, last_seq: int, epoch: int = 0
    ) -> bool:
        """Make ``conn`` a member of ``cid`` after replaying seq > since (pushed in order).

        The caller has already subscribed (``acquire``) before asking the conversation service
        for ``last_seq``, so every event after it reaches the sequencer. False (not a member,
        the caller releases) when the conversation's audience no longer admits the principal:
        a removal replayed here (the client gets it as its last frame) or already delivered
        live on this instance.
        """
        kind, pid = conn.principal.kind, conn.principal.id
        conv = self.convs[cid]
        self._apply(conv, conv.seq.start(last_seq, epoch))
        start = last_seq if since is None else min(since, last_seq)
        conn.joined.pop(cid, None)
        conv.members.discard(conn)
        delivered = start
        target = max(last_seq, conv.seq.last or 0)
        while delivered < target and not conn.closing:
            before = delivered
            async for page in self.event_pages(conn.principal, cid, delivered, target):
                for seq, frame in page:
                    if seq > delivered and not conn.closing:
                        await conn.wait_writable()  # a long history waits for the reader
                        conn.push(frame)
                        delivered = seq
                        audience = audience_change(frame)
                        if audience is not None and not audience.admits(kind, pid):
                            return False  # removed meanwhile: that frame was its last
                if conn.closing:
                    break  # still becomes a member below: unregister cleans up
            if delivered == before:
                break
            target = max(target, conv.seq.last or 0)
        # No await between these checks and joining the members: nothing can slip in between.
        if conv.audience is not None and not conv.audience.admits(kind, pid):
            return False
        conn.joined[cid] = delivered
        for snapshot in conv.turn.snapshot(cid):  # where a running agent turn is, then live
            conn.push(snapshot)
        conv.members.add(conn)
        self.dirty.add(conn)
        return True

    async def leave(self, conn: Conn, cid: str, *, announce: bool = True) -> None:
        conv = self.convs.get(cid)
        conn.joined.pop(cid, None)
        self.dirty.add(conn)
        if conv is None or conn not in conv.members:
            return
        conv.members.discard(conn)
        key = (conn.principal.kind, conn.principal.id)
        if announce and not any((m.principal.kind, m.principal.id) == key for m in conv.members):
            await self.publish_presence(conn, cid, online=False)
        await self.release(conv)

    async def publish(self, cid: str, frame: dict[str, Any], *, origin: str | None = None) -> None:
        """Publish an ephemeral event to a conversation (batched; never waits for NATS).

        Publishes are collected for ``PUBLISH_WINDOW_SECONDS`` and handed to the NATS client
        together: one socket write for the batch instead of one per event loop tick that
        published (the gateway publishes only ephemeral events: typing, presence).
        """
        nc = self.nc
        if nc is None or not nc.is_connected:
            raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "message bus unavailable")
        headers = {subjects.HEADER_ORIGIN: origin} if origin is not None else None
        self._outbox.append((subjects.conversation_ephemeral(cid), jsonutil.dumps(frame), headers))
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_later(PUBLISH_WINDOW_SECONDS, self._send_outbox)

    def _send_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._publish_batch(batch))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def _publish_batch(self, batch: list[tuple[str, bytes, dict[str, str] | None]]) -> None:
        nc = self.nc
        if nc is None:
            return
        for subject, payload, headers in batch:  # no real wait inside: one flush for all
            try:
                await nc.publish(subject, payload, headers=headers)
            except nats.errors.Error as exc:
                logger.warning("publish on %s failed: %s", subject, exc)

    async def _flush_publishes(self) -> None:
        """Send what waits in the outbox now (drain, stop)."""
        self._send_outbox()
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)

    async def publish_presence(
        self, conn: Conn, cid: str, *, online: bool, status: str | None = None
    ) -> None:
        p = conn.principal
        event = _PRESENCE_EVENTS[(p.kind, online)]
        data: dict[str, Any] = {
            "conversationId": cid,
            "principalId": p.id,
            "kind": p.kind.value,
            "name": p.name,
        }
        if status is not None:
            data["status"] = status
        with contextlib.suppress(nats.errors.Error, ParleyError):
            await self.publish(cid, envelopes.event_frame(event, data, conversation_id=cid))

    # ------------------------------------------------------------------ connections

    async def register(self, conn: Conn) -> None:
        kind, pid = conn.principal.kind, conn.principal.id
        state = self.principals.get((kind, pid))
        if state is None:
            state = PrincipalState()
            self.principals[(kind, pid)] = state
            assert self.nc is not None
            state.sub = await subscribe_direct(
                self.nc, subjects.principal_events(kind, pid), self._principal_handler(state)
            )
        state.conns.add(conn)
        self.sessions[conn.session_id] = conn
        self.metrics.connections.labels(conn.principal.kind.value).inc()
        # Not acknowledged: the client gets ``connected`` without waiting for JetStream, and
        # the presence refresh (every presenceTtl/3, acknowledged) repairs a lost write.
        await self._put_presence(conn.principal.kind, pid, len(state.conns), ack=False)

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
                await self.leave(conn, cid, announce=True)
            except nats.errors.Error:
                logger.warning("leave %s on disconnect failed", cid, exc_info=True)
        if self.sessions.get(conn.session_id) is conn:
            del self.sessions[conn.session_id]
        self.dirty.discard(conn)
        self.metrics.connections.labels(conn.principal.kind.value).dec()
        state = self.principals.get((kind, pid))
        if state is not None:
            state.conns.discard(conn)
            if not state.conns:
                del self.principals[(kind, pid)]
                if state.sub is not None:
                    with contextlib.suppress(nats.errors.Error):
                        await state.sub.unsubscribe()
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                    assert self.kv_presence is not None
                    await self.kv_presence.delete(self._presence_key(conn.principal.kind, pid))
            else:
                await self._put_presence(conn.principal.kind, pid, len(state.conns))

    # ------------------------------------------------------------------ sessions

    def session_doc(self, conn: Conn, joined: dict[str, int] | None = None) -> bytes:
        return jsonutil.dumps(
            {
                "principal": conn.principal.model_dump(mode="json"),
                "conversations": dict(conn.joined if joined is None else joined),
                "instanceId": self.instance_id,
                "updatedAt": now_iso(),
            }
        )

    async def save_session(
        self, conn: Conn, joined: dict[str, int] | None = None, *, ack: bool = True
    ) -> None:
        """Write the session to the KV; ``ack=False``: a plain publish, no round trip."""
        if conn.kicked or self.kv_sessions is None:
            return
        doc = self.session_doc(conn, joined)
        if not ack:
            await self._kv_publish(subjects.KV_SESSIONS, conn.session_id, doc)
            return
        try:
            await self.kv_sessions.put(conn.session_id, doc)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            logger.warning("session %s not saved: %s", conn.session_id, exc)

    async def _kv_publish(self, bucket: str, key: str, value: bytes) -> None:
        """A KV put without waiting for JetStream's acknowledgement (batched by the client)."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            return
        try:
            await nc.publish(subjects.kv_key_subject(bucket, key), value)
        except nats.errors.Error as exc:
            logger.warning("%s %s not saved: %s", bucket, key, exc)

    async def load_session(self, session_id: str, principal: Principal) -> dict[str, int] | None:
        """The conversations (cid → last seq delivered) of a session of this principal."""
        if self.kv_sessions is None:
            return None
        try:
            entry = await self.kv_sessions.get(session_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except (nats.errors.Error, nats.js.errors.Error, ValueError) as exc:
            logger.warning("session %s not loaded: %s", session_id, exc)
            return None
        try:
            doc = jsonutil.loads(entry.value or b"")
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        owner = doc.get("principal") or {}
        if owner.get("id") != principal.id or owner.get("kind") != principal.kind.value:
            return None
        convs = doc.get("conversations") or {}
        return {str(k): int(v) for k, v in convs.items() if isinstance(v, int)}

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

    async def _on_kick(self, msg: Msg) -> None:
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

    # ------------------------------------------------------------------ presence

    def _presence_key(self, kind: PrincipalKind, pid: str) -> str:
        return f"{kind.value}.{pid}.{self.instance_id}"

    async def _put_presence(
        self, kind: PrincipalKind, pid: str, count: int, *, ack: bool = True
    ) -> None:
        if self.kv_presence is None:
            return
        if not ack:
            await self._kv_publish(
                subjects.KV_PRESENCE, self._presence_key(kind, pid), str(count).encode()
            )
            return
        try:
            await self.kv_presence.put(self._presence_key(kind, pid), str(count).encode())
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            logger.warning("presence of %s not saved: %s", pid, exc)

    async def _put_instance(self) -> None:
        if self.kv_instances is None or self.draining:
            return
        users = sum(
            1 for (kind, _), s in self.principals.items() if s.conns and kind is PrincipalKind.USER
        )
        doc = {
            "instanceId": self.instance_id,
            "host": self.settings.host,
            "port": self.settings.port,
            "connections": len(self.sessions),
            "users": users,
            "agents": len(self.principals) - users,
            "conversations": len(self.convs),
            "startedAt": self.started_at,
            "updatedAt": now_iso(),
        }
        await self.kv_instances.put(self.instance_id, jsonutil.dumps(doc))

    async def _refresh_presence(self) -> None:
        await self._put_instance()
        items = [(kind, pid, len(s.conns)) for (kind, pid), s in self.principals.items() if s.conns]
        for i in range(0, len(items), 200):
            await asyncio.gather(*(self._put_presence(*it) for it in items[i : i + 200]))
        await self._watch_instances()

    async def _watch_instances(self) -> None:
        """Notice instances whose heartbeat key is gone (crashed: expired) and reap them."""
        if self.kv_instances is None or self.draining:
            return
        keys = set(await _keys(self.kv_instances))
        gone = self._seen_instances - keys - {self.instance_id}
        self._seen_instances = keys
        for instance in sorted(gone):
            await self._reap(instance)

    async def _reap(self, instance: str) -> None:
        """Publish the offline events a vanished instance could not send.

        One gateway does it (a KV ``create`` is the lock): each session still attributed to
        that instance (clients that have not resumed elsewhere) gets ``presence:offline`` /
        ``agent:offline`` in each of its conversations. After a graceful drain these repeat
        offline events already sent; after a crash they are the only ones.
        """
        assert self.kv_presence is not None and self.kv_sessions is not None
        try:
            await self.kv_presence.create(f"reaped.{instance}", self.instance_id.encode())
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            return  # another gateway is on it
        logger.info("instance %s is gone: publishing its clients' offline events", instance)
        count = 0
        for key in await _keys(self.kv_sessions):
            try:
                entry = await self.kv_sessions.get(key)
                doc = jsonutil.loads(entry.value or b"")
            except (nats.js.errors.Error, nats.errors.Error, ValueError):
                continue
            if not isinstance(doc, dict) or doc.get("instanceId") != instance:
                continue
            try:
                principal = Principal.model_validate(doc.get("principal"))
            except ValueError:
                continue
            event = _PRESENCE_EVENTS.get((principal.kind, False))
            if event is None:
                continue
            for cid in doc.get("conversations") or {}:
                data = {
                    "conversationId": cid,
                    "principalId": principal.id,
                    "kind": principal.kind.value,
                    "name": principal.name,
                    "reason": "instance-lost",
                }
                with contextlib.suppress(nats.errors.Error, ParleyError):
                    await self.publish(cid, envelopes.event_frame(event, data, conversation_id=cid))
                    count += 1
        logger.info("instance %s: %d offline events published", instance, count)

    async def scaling(self) -> dict[str, Any]:
        """design doc 1.4: users, agents and instances online across the cluster."""
        assert self.kv_presence is not None and self.kv_instances is not None
        users: set[str] = set()
        agents: set[str] = set()
        for key in await _keys(self.kv_presence):
            kind, _, rest = key.partition(".")
            pid = rest.rsplit(".", 1)[0]
            if kind == PrincipalKind.USER.value:
                users.add(pid)
            elif kind == PrincipalKind.AGENT.value:
                agents.add(pid)
        if self.kv_agents is None and self.nc is not None:
            with contextlib.suppress(nats.js.errors.BucketNotFoundError):
                self.kv_agents = await self.nc.jetstream().key_value(subjects.KV_AGENTS)
        if self.kv_agents is not None:
            # Agents served by agent bridges: key <agentId>.<bridgeInstanceId>.
            agents.update(key.rsplit(".", 1)[0] for key in await _keys(self.kv_agents))
        instances = await _keys(self.kv_instances)
        n = len(instances)
        return {
            "users": len(users),
            "agents": len(agents),
            "instances": n,
            "avgUsersPerInstance": round(len(users) / n) if n else 0,
        }

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat(self) -> None:
        now = time.time()
        for conn in list(self.sessions.values()):
            if conn.closing:
                continue
            if conn.exp <= now:
                conn.close(4401, "token expired")
                continue
            conn.send_ping()

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


async def _keys(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except nats.js.errors.NoKeysError:
        return []
