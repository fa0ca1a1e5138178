"""Delivery and read receipts, unread counts and display names (issue 17, docs/protocol.md 3.6).

- ``conversation:read {conversationId, seq}``: the caller's read cursor moves forward.
- Gateways report, in batches (``subjects.INTERNAL_DELIVERY``), how far each principal's
  connections received a conversation's durable frames; the messages it covers that someone
  other than their author received read ``delivered`` from then on: the conversation's
  delivery watermark moves (parley_conversation.delivery), the reports of a window in one
  write, folded into the totals write.
- Both fan out as ephemeral events to the conversation, coalesced: at most one
  ``conversation:read`` and one ``message:delivered`` per conversation per window, each
  carrying the cursors that moved (the latest seq of each principal). ``message:delivered``
  is sent only when a message's status changed, so a thousand members receiving the same
  message make one event, not a thousand.
- ``conversation:activity``: new messages in a conversation, to each active user
  participant's own subject (coalesced per conversation per window, at most
  ``ACTIVITY_MAX_RECIPIENTS``), so a client's list updates unread counts of conversations it
  does not watch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import DeliveryReport, Principal
from parley_contract.models import Conversation, Message, MessageStatus, Role
from parley_contract.partitions import partition_of
from parley_conversation.cursors import CursorStore, principal_key
from parley_conversation.delivery import Delivery, NotRecorded, Who, WriteMarks

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
LastSeq = Callable[[str], Awaitable[int]]

ACTIVITY_MAX_RECIPIENTS: Final = 500
# Reports held for conversations another replica owns (see Receipts.took): at most this many
# conversations, the least recently reported dropped first.
HELD_MAX: Final = 10_000


def _cursor(kind: PrincipalKind | str, pid: str, seq: int) -> dict[str, Any]:
    return {"principalId": pid, "kind": PrincipalKind(kind).value, "seq": seq}


class Receipts:
    """One replica's receipts: the store calls and the coalescing of their events."""

    def __init__(
        self,
        cursors: CursorStore,
        last_seq: LastSeq,
        publish: Publish,
        window: float,
        *,
        totals: AsyncCollection[dict[str, Any]],
        write_marks: WriteMarks,
    ) -> None:
        self.cursors = cursors
        # The delivery marks: read from ``totals``, stored by ``write_marks`` (the totals
        # writer: one update per conversation per window, with its totals).
        self.delivery = Delivery(cursors.messages, totals, write_marks)
        self._last_seq = last_seq
        self._publish = publish
        self.window = window
        # conversation → (kind, id) → seq, flushed once per window.
        self._reads: dict[str, dict[tuple[PrincipalKind, str], int]] = {}
        self._delivered: dict[str, dict[tuple[PrincipalKind, str], int]] = {}
        self._activity: dict[str, tuple[list[tuple[PrincipalKind, str]], dict[str, Any]]] = {}
        # (conversation, agent) → the seq of the agent's latest stored message: the agent
        # received everything before it (an agent bridge has no connection to report it).
        self._agents: dict[tuple[str, str], int] = {}
        # Delivery reports of this window, merged: conversation → (kind, id) → seq.
        self._reports: dict[str, dict[tuple[PrincipalKind, str], int]] = {}
        # Whether this replica applies a conversation's receipts (None: every conversation).
        # With affinity every replica gets every report and applies the conversations whose
        # partition it owns: the owner wrote their messages, so it reads nothing for them
        # (Delivery.stored), and no two replicas read and mark the same messages.
        self.mine: Callable[[str], bool] | None = None
        # The reports of conversations another replica owns, kept ``held_seconds`` (at least
        # as long as a killed owner's lease outlives it): if the owner dies before applying
        # them, or the partition is between owners, whoever takes it applies them (took()).
        # conversation → (monotonic time, partition, (kind, id) → seq), oldest first.
        self.held_seconds = 30.0
        self._held: OrderedDict[str, tuple[float, int, dict[Who, int]]] = OrderedDict()
        # partition → its conversations in ``_held``, in the same order (a dict as an
        # ordered set): took() looks at these only.
        self._held_in: dict[int, dict[str, None]] = {}
        self._flusher: asyncio.Task[None] | None = None
        # One flush at a time: a flush that finds the reports taken by one under way waits
        # for it (flush() returns once what was received before it is applied).
        self._flushing = asyncio.Lock()

    # ------------------------------------------------------------ commands

    async def read(self, p: Principal, conv: Conversation, seq: int) -> dict[str, Any]:
        """conversation:read: the cursor moves forward (never back); the reply says where it
        is and what is still unread."""
        if p.kind is PrincipalKind.SERVICE:
            raise ParleyError(ErrorCode.FORBIDDEN, "services have no read cursor")
        last = await self._last_seq(conv.id)
        if seq > last:
            raise ParleyError(
                ErrorCode.VALIDATION_ERROR,
                f"seq: {seq} is beyond the conversation's last seq ({last})",
                {"field": "seq", "lastSeq": last},
            )
        before = await self.cursors.read_to(conv.id, p.kind, p.id, seq)
        if before is None:
            doc = await self.cursors.cursor(conv.id, p.kind, p.id)
            current = int((doc or {}).get("readSeq", seq))
        else:
            current = seq
            self._reads.setdefault(conv.id, {})[(p.kind, p.id)] = seq
            self._schedule()
        unread = await self.cursors.unread(conv.id, p.kind, p.id, current)
        data = {
            "conversationId": conv.id,
            "cursors": [_cursor(p.kind, p.id, current)],
            "unreadCount": unread,
        }
        if before is not None:
            # The reader's other connections (other tabs, the list of another device).
            frame = envelopes.event_frame(Event.CONVERSATION_READ, data, conversation_id=conv.id)
            await self._publish(subjects.principal_events(p.kind, p.id), jsonutil.dumps(frame))
        return {"conversationId": conv.id, "seq": current, "unreadCount": unread}

    async def delivery_report(self, body: bytes) -> None:
        """A gateway's batch: merged with the others of this window (no store call here);
        at the window's end the conversations' delivery watermarks move, every conversation
        in one write with the totals (parley_conversation.delivery). Per
        report it was a read and a write per conversation: at 400 messages/s into 100
        conversations that was a write per message, and the writes of the log queued
        behind them in the store (docs/benchmarks.md, "Conversation affinity")."""
        try:
            report = DeliveryReport.model_validate_json(body)
        except ValidationError as exc:
            logger.warning("dropping a malformed delivery report: %s", exc.errors()[:1])
            return
        mine = self.mine
        taken = False
        for it in report.items:
            if it.kind is PrincipalKind.SERVICE:
                continue
            if mine is not None and not mine(it.conversation_id):
                self._hold(it.conversation_id, (it.kind, it.principal_id), it.seq)
                continue  # its owner applies it
            self._received(it.conversation_id, (it.kind, it.principal_id), it.seq)
            taken = True
        if taken:
            self._schedule()

    def _hold(self, cid: str, key: Who, seq: int) -> None:
        now = time.monotonic()
        held = self._held.pop(cid, None)
        _, partition, got = held if held is not None else (now, partition_of(cid), {})
        got[key] = max(got.get(key, 0), seq)
        self._held[cid] = (now, partition, got)
        in_partition = self._held_in.setdefault(partition, {})
        in_partition.pop(cid, None)
        in_partition[cid] = None  # last, as in _held
        while self._held and (
            len(self._held) > HELD_MAX
            or now - next(iter(self._held.values()))[0] > self.held_seconds
        ):
            dropped, (_, p, _) = self._held.popitem(last=False)
            self._unhold(p, dropped)

    def _unhold(self, partition: int, cid: str) -> None:
        in_partition = self._held_in[partition]
        del in_partition[cid]
        if not in_partition:
            del self._held_in[partition]

    def took(self, partition: int) -> None:
        """This replica took ``partition``: the reports it held for the partition's
        conversations are applied in the next window. Reports are cumulative and the watermark
        only moves up, so applying what the old owner applied already changes nothing; what
        a killed owner never applied, or what came while the partition had no owner, moves it
        now instead of waiting for the conversation's next report (a quiet conversation's
        last messages stayed `sent` without this). Looks at the partition's held
        conversations only (``_held_in``), not at every held one."""
        now = time.monotonic()
        mine = [
            cid
            for cid in self._held_in.get(partition, ())
            if now - self._held[cid][0] <= self.held_seconds
        ]
        for cid in mine:
            _, _, got = self._held.pop(cid)
            self._unhold(partition, cid)
            for key, seq in got.items():
                self._received(cid, key, seq)
        if mine:
            self._schedule()

    def _received(self, cid: str, key: Who, seq: int) -> None:
        got = self._reports.setdefault(cid, {})
        got[key] = max(got.get(key, 0), seq)

    async def _apply_deliveries(self) -> None:
        reports, self._reports = self._reports, {}
        try:
            moved_by = await self.delivery.apply_many(reports)
        except (PyMongoError, NotRecorded):
            # Nothing applied: the reports go again with the next window's (cumulative:
            # applying one twice changes nothing), not lost until the next report comes.
            logger.warning("delivery receipts not recorded (store), retried", exc_info=True)
            for cid, got in reports.items():
                for key, seq in got.items():
                    self._received(cid, key, seq)
            return
        for cid, moved in moved_by.items():
            pending = self._delivered.setdefault(cid, {})
            for key, seq in moved.items():
                pending[key] = max(pending.get(key, 0), seq)

    def activity(self, conv: Conversation, stored: list[Message]) -> None:
        """New messages were stored in ``conv``: its users' lists should know (coalesced), and
        an agent that wrote has received what came before (delivery, at the next flush)."""
        for m in stored:
            if m.role in (Role.ASSISTANT, Role.TOOL) and m.agent_id and m.seq is not None:
                key = (conv.id, m.agent_id)
                self._agents[key] = max(self._agents.get(key, 0), m.seq)
        if self._agents:
            self._schedule()
        self.delivery.stored(
            conv.id,
            [
                (m.seq, m.id, m.created_by)
                for m in stored
                if m.seq is not None and m.message_status is MessageStatus.SENT
            ],
        )
        counted = [m for m in stored if m.role is not Role.TOOL and m.seq is not None]
        if not counted:
            return
        last = max(counted, key=lambda m: m.seq or 0)
        users = [
            x.principal for x in conv.participants if x.active and x.kind is PrincipalKind.USER
        ]
        if not users or len(users) > ACTIVITY_MAX_RECIPIENTS:
            return
        data = {
            "conversationId": conv.id,
            "lastSeq": last.seq,
            "lastMessage": {
                "messageId": last.id,
                "role": last.role.value,
                "messageType": last.message_type.value,
                "content": last.content[:200],
                "createdBy": last.created_by,
                "seq": last.seq,
            },
        }
        self._activity[conv.id] = (users, data)
        self._schedule()

    # ------------------------------------------------------------ reads

    async def unread_counts(self, p: Principal, items: list[dict[str, Any]]) -> None:
        """``unreadCount`` and ``readSeq`` of the caller into each conversation (wire dicts)."""
        if p.kind is PrincipalKind.SERVICE or not items:
            return
        ids = [str(c["_id"]) for c in items]
        seqs = await self.cursors.read_seqs(p.kind, p.id, ids)

        async def count(c: dict[str, Any], cid: str) -> int:
            # Read up to the last seq the list knows: nothing to count (the common case; the
            # caller settled this replica's totals, another replica's may trail by its totals
            # interval: conversation:activity then makes the client ask again).
            last = c.get("lastSeq")
            if isinstance(last, int) and seqs[cid] >= last:
                return 0
            return await self.cursors.unread(cid, p.kind, p.id, seqs[cid])

        counts = await asyncio.gather(*(count(c, cid) for c, cid in zip(items, ids, strict=True)))
        for c, cid, n in zip(items, ids, counts, strict=True):
            c["unreadCount"] = n
            c["readSeq"] = seqs[cid]

    async def join_info(self, p: Principal, cid: str) -> dict[str, Any]:
        """What conversation:joined adds: the caller's unread count and read seq, and the
        cursors of the members (who read and received how far: "seen by", "delivered")."""
        cursors = await self.cursors.cursors_of(cid)
        mine = next(
            (c for c in cursors if c["kind"] == p.kind.value and c["principalId"] == p.id), None
        )
        read_seq = mine["readSeq"] if mine else 0
        unread = 0
        if p.kind is not PrincipalKind.SERVICE:
            unread = await self.cursors.unread(cid, p.kind, p.id, read_seq)
        return {"unreadCount": unread, "readSeq": read_seq, "cursors": cursors}

    async def add_names(
        self, items: list[dict[str, Any]], known: Mapping[str, str] | None = None
    ) -> None:
        """Each participant's display name (``name``) from the directory, when known.
        ``known``: names (``<kind>:<id>`` → name) the directory holds as of now, not read
        again (a batched rejoin's principals, whose names were just stored)."""
        known = known or {}
        keys = [
            principal_key(
                PrincipalKind.USER if x.get("userId") else PrincipalKind.AGENT,
                x.get("userId") or x.get("agentId") or "",
            )
            for c in items
            for x in c.get("participants") or []
        ]
        missing = [k for k in keys if k not in known]
        if not keys:
            return
        names = {**(await self.cursors.names(missing) if missing else {}), **known}
        for c in items:
            for x in c.get("participants") or []:
                kind = PrincipalKind.USER if x.get("userId") else PrincipalKind.AGENT
                name = names.get(principal_key(kind, x.get("userId") or x.get("agentId") or ""))
                if name:
                    x["name"] = name

    # ------------------------------------------------------------ coalescing

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        while True:
            await asyncio.sleep(self.window)
            await self.flush()
            # What arrived while flushing waits for the next window, not for the next event.
            if not (
                self._reads or self._delivered or self._activity or self._agents or self._reports
            ):
                return

    async def flush(self) -> None:
        """Apply and announce what was received so far; returns once it is (after the flush
        under way, if any: the window's own could have taken the reports a moment before)."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        agents, self._agents = self._agents, {}
        for (cid, agent_id), seq in agents.items():
            self._received(cid, (PrincipalKind.AGENT, agent_id), seq)
        # Reads and activity first: the deliveries wait for their marks to be written
        # (with the next totals write), their events after it.
        reads, self._reads = self._reads, {}
        activity, self._activity = self._activity, {}
        await self._cursors_event(Event.CONVERSATION_READ, reads)
        for cid, (users, data) in activity.items():
            frame = envelopes.event_frame(Event.CONVERSATION_ACTIVITY, data, conversation_id=cid)
            payload = jsonutil.dumps(frame)
            for kind, pid in users:
                await self._publish(subjects.principal_events(kind, pid), payload)
        await self._apply_deliveries()
        delivered, self._delivered = self._delivered, {}
        await self._cursors_event(Event.MESSAGE_DELIVERED, delivered)

    async def _cursors_event(self, event: Event, pending: dict[str, dict[Who, int]]) -> None:
        """One event per conversation naming the cursors that moved."""
        for cid, moved in pending.items():
            data = {
                "conversationId": cid,
                "cursors": [_cursor(k, pid, seq) for (k, pid), seq in moved.items()],
            }
            frame = envelopes.event_frame(event, data, conversation_id=cid)
            await self._publish(subjects.conversation_events(cid), jsonutil.dumps(frame))

    async def stop(self) -> None:
        """The window's flush under way ends first (cancelled halfway, the reports it took
        were dropped), then its task, then the last flush."""
        async with self._flushing:
            if self._flusher is not None:
                self._flusher.cancel()
                await asyncio.wait([self._flusher])
            await self._flush()
