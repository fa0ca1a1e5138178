"""Interest-based fan-out of conversations to this instance's connections.

- One NATS subscription per conversation that at least one local client has joined, dropped
  when the last one leaves. Each frame is parsed once (to read ``seq`` and ``event``) and the
  bytes the conversation service published are written verbatim to every local member.
- Ordering: a :class:`~parley_gateway.ordering.Sequencer` per conversation delivers durable
  events in ``seq`` order; a gap waits ``gap_wait_seconds``, then is filled from the store
  (QUERY_EVENTS_SINCE). Duplicates are dropped, per conversation and per connection.
- Live membership: every durable ``conversation:updated`` / ``conversation:deleted`` frame
  says who may still follow the conversation (``parley_contract.access``); a member it no
  longer admits gets that frame as its last one and is evicted at that ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.access import Audience, audience_change
from parley_contract.errors import ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.turnstate import TURN_EVENTS
from parley_gateway.conn import Conn, frame_text
from parley_gateway.metrics import Metrics
from parley_gateway.natsdirect import subscribe_direct
from parley_gateway.ordering import Outcome, Sequencer
from parley_gateway.receipts import DeliveryReporter
from parley_gateway.sessions import Sessions
from parley_gateway.settings import Settings
from parley_gateway.turns import TurnTracker

logger = logging.getLogger(__name__)

PRESENCE_EVENTS = {
    (PrincipalKind.USER, True): Event.PRESENCE_ONLINE,
    (PrincipalKind.USER, False): Event.PRESENCE_OFFLINE,
    (PrincipalKind.AGENT, True): Event.AGENT_ONLINE,
    (PrincipalKind.AGENT, False): Event.AGENT_OFFLINE,
}


_EPOCH = subjects.HEADER_EPOCH
_MESSAGE_NEW = Event.MESSAGE_NEW.value


def _int(value: str | None) -> int | None:
    """A header's integer (seq, epoch), None if it is not one."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 19:
        return None
    return int(value)


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


class Fanout(Sessions):
    """The conversations this instance follows and their local members."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self.convs: dict[str, ConvState] = {}
        self._evicting: set[asyncio.Task[None]] = set()
        self.delivery = DeliveryReporter(self.convs, lambda: self.nc)  # receipts.py

    async def acquire(self, cid: str) -> ConvState:
        """Subscribe (once per instance) to a conversation; the caller must ``release``."""
        conv = self.convs.get(cid)
        if conv is None:
            conv = ConvState(cid)
            self.convs[cid] = conv
            conv.refs += 1
            try:
                assert self.nc is not None
                # No flush (PING/PONG) after the SUB: the client sends its commands in order
                # and the server applies them in order, so the SUB is in place before any
                # request made after it (the turn's read, the join) reaches the server.
                # (nats-py's flush even wrote its PING ahead of the SUB still pending; in
                # a storm it cost a socket write per conversation, 6 % of a gateway.)
                conv.sub = await subscribe_direct(
                    self.nc, subjects.conversation_feed(cid), self._conv_handler(conv)
                )
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
        sub, conv.sub = conv.sub, None  # conv -> sub -> handler -> conv: not left as a cycle
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def _conv_handler(self, conv: ConvState) -> Callable[[Msg], None]:
        def on_msg(msg: Msg) -> None:
            headers = msg.headers
            ephemeral = subjects.is_ephemeral_subject(msg.subject)
            if headers and not ephemeral and subjects.HEADER_SEQ in headers:
                # A durable frame: ordered by its headers, the body is not decoded.
                seq, epoch = _int(headers[subjects.HEADER_SEQ]), _int(headers.get(_EPOCH))
                if seq is not None:
                    event = headers.get(subjects.HEADER_EVENT)
                    self.on_durable_frame(conv, msg.data, seq, epoch or 0, event)
                    return
            origin = headers.get(subjects.HEADER_ORIGIN) if headers else None
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
        if ephemeral_only and "seq" in frame:
            # Before anything reads it (the turn tracker too): forged, it changes nothing.
            self.metrics.drops.labels("bad_frame").inc()
            logger.warning("dropping a frame with a seq on %s's ephemeral subject", conv.cid)
            return
        if frame["event"] in TURN_EVENTS:
            conv.turn.on_frame(frame["event"], frame.get("data"))
        seq = frame.get("seq")
        if not isinstance(seq, int):
            self.metrics.events_in.labels("ephemeral").inc()
            wire = frame_text(data)  # framed once, the same bytes for every member
            for conn in list(conv.members):
                if origin is None or conn.session_id != origin:
                    conn.push_frame(wire)
            return
        epoch = frame.get("epoch", 0)
        self._durable(conv, data, seq, epoch if isinstance(epoch, int) else 0)

    def on_durable_frame(
        self, conv: ConvState, data: bytes, seq: int, epoch: int, event: str | None
    ) -> None:
        """A durable frame whose seq, epoch and event came in its NATS headers: the body is
        decoded only for a message:new while the turn tracker follows an agent turn."""
        if event == _MESSAGE_NEW and conv.turn.tracking:
            try:
                frame = jsonutil.loads(data)
            except ValueError:
                frame = None
            if isinstance(frame, dict):
                conv.turn.on_frame(event, frame.get("data"))
        self._durable(conv, data, seq, epoch)

    def _durable(self, conv: ConvState, data: bytes, seq: int, epoch: int) -> None:
        self.metrics.events_in.labels("durable").inc()
        out = conv.seq.push(seq, data, epoch)
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
        if wire is not None:
            self.delivery.touch(cid)
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
        self.delivery.touch(cid)
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

    async def publish_presence(
        self, conn: Conn, cid: str, *, online: bool, status: str | None = None
    ) -> None:
        p = conn.principal
        event = PRESENCE_EVENTS[(p.kind, online)]
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
