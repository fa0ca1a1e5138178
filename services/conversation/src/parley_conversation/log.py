"""The conversation log: the ``messages`` collection, and the seqs it hands out.

Sequencing (see README "Sequencing"): the collection ``messages`` is the conversation log and
the source of truth for ``seq``. A ``message:new`` is its message document; any other durable
event is a document ``{_id: "<conversationId>:<seq>", event, frame}`` in the same collection.
Each claims its seq by being inserted, under a unique ``(conversationId, seq)`` index;
an entry with a ``clientMessageId`` has an ``_id`` derived from it (idempotency.entry_id),
so the key is stored once per conversation by the ``_id`` index. A seq exists only once
its complete entry is stored, so a crash can never leave a gap, and a message is stored
once, with its seq; a collision (another replica took that seq) is retried with a fresh seq.

:class:`ConversationLog` is the hot path's part of the store (``MongoStore`` is one); the
collection's indexes are declared in :mod:`parley_conversation.documents`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.models import Message, MessageType, Role
from parley_conversation import statuses
from parley_conversation.documents import TOTALS_COLLECTION, message_doc
from parley_conversation.entries import (
    DUPLICATE_KEY,
    LOG_EVENT,
    UNENCODABLE,
    AppendResult,
    PendingEvent,
    first_unencodable,
    frame_of,
    log_entry,
    unstorable,
)
from parley_conversation.epochs import HighWaterMarks
from parley_conversation.idempotency import entry_id

logger = logging.getLogger(__name__)

MAX_APPEND_ROUNDS = 10_000
SEQ_CACHE_SIZE = 50_000
# The result of a ``strict`` conversation's entry not stored because another writer took
# seqs in between (authcache.py): the sequencer authorizes it again from the store.
STALE = ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "the conversation changed, retry")


class ConversationLog:
    """Appends to the log and reads it back, keeping each conversation's next seq (and its
    epoch, epochs.py) cached per replica."""

    def __init__(self, messages: AsyncCollection[dict[str, Any]]) -> None:
        self.messages = messages
        # The conversations' totals, with their delivery marks (statuses.py: what a read of
        # the log says a message's status is).
        self.totals: AsyncCollection[dict[str, Any]] = messages.database[TOTALS_COLLECTION]
        self._next_seq: OrderedDict[str, int] = OrderedDict()
        self._epochs: dict[str, int] = {}  # the epoch of each cached next seq (epochs.py)
        self.marks: HighWaterMarks | None = None  # set once NATS is up (the service)
        # Called once per insert refused for a seq another writer took (a metric).
        self.on_collision: Callable[[], None] | None = None

    async def last_seq(self, conversation_id: str) -> int:
        doc = await self.messages.find_one(
            {"conversationId": conversation_id}, {"seq": 1}, sort=[("seq", DESCENDING)]
        )
        return int(doc["seq"]) if doc else 0

    async def last_seqs(self, ids: Sequence[str]) -> dict[str, int]:
        """The highest stored seq of each conversation (0 if none)."""
        values = await asyncio.gather(*(self.last_seq(cid) for cid in ids))
        return dict(zip(ids, values, strict=True))

    def cached_next_seq(self, conversation_id: str) -> int | None:
        """The next seq this replica would write the conversation with (None: not cached)."""
        return self._next_seq.get(conversation_id)

    def _remember(self, conversation_id: str, next_seq: int) -> None:
        self._next_seq[conversation_id] = next_seq
        self._next_seq.move_to_end(conversation_id)
        while len(self._next_seq) > SEQ_CACHE_SIZE:
            old, _ = self._next_seq.popitem(last=False)
            self._epochs.pop(old, None)

    async def append_events(
        self, groups: Mapping[str, Sequence[PendingEvent]], *, strict: Set[str] = frozenset()
    ) -> dict[str, list[AppendResult]]:
        """See :meth:`_append_events`. After an error (or a cancellation) what was stored is
        unknown: the next seqs of these conversations are read from the log again, never
        taken from a cache that may be behind or ahead of it (issue 11)."""
        try:
            return await self._append_events(groups, strict)
        except BaseException:
            for cid in groups:
                self._next_seq.pop(cid, None)
                self._epochs.pop(cid, None)
            raise

    def forget_seqs(self) -> None:
        """Drop every cached next seq: the store was unreachable or changed (a restart may
        have lost what was not durable); the next writes read the log's maximum."""
        if self._next_seq:
            logger.info(
                "store connection pool cleared: %d cached next seqs dropped", len(self._next_seq)
            )
        self._next_seq.clear()
        self._epochs.clear()

    def forget_seqs_where(self, which: Callable[[str], bool]) -> None:
        """Drop the cached next seqs of the conversations ``which`` picks (a partition this
        replica takes or gives up: another replica may have written them, docs/affinity.md)."""
        for cid in [c for c in self._next_seq if which(c)]:
            del self._next_seq[cid]
            self._epochs.pop(cid, None)

    async def _load_sequences(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(the log's highest seq, the epoch to write with) of conversations not cached:
        the epoch moves on when the log is shorter than the high-water mark (epochs.py)."""

        async def one(cid: str) -> tuple[int, int]:
            # The mark first, then the log: a mark is published only after the entries up to
            # it are stored, so a log read after it reaches it unless entries were lost. (The
            # other order let another replica's write and mark land in between: a false
            # "shorter", a new epoch for nothing.)
            mark = await self.marks.get(cid) if self.marks is not None else None
            last, epoch = (await self._last_entries([cid]))[cid]
            if mark is not None:
                mark_epoch, mark_seq = mark
                epoch = max(epoch, mark_epoch)
                if mark_seq > last:
                    epoch += 1
                    logger.warning(
                        "conversation %s: seq %d was published but the log ends at %d: "
                        "epoch %d begins",
                        cid,
                        mark_seq,
                        last,
                        epoch,
                    )
                    assert self.marks is not None
                    await self.marks.put(cid, epoch, last)
            return last, epoch

        values = await asyncio.gather(*(one(cid) for cid in ids))
        return dict(zip(ids, values, strict=True))

    async def _last_entries(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(seq, epoch) of the last log entry of each conversation ((0, 0) if none)."""

        async def one(cid: str) -> tuple[int, int]:
            doc = await self.messages.find_one(
                {"conversationId": cid}, {"seq": 1, "epoch": 1}, sort=[("seq", DESCENDING)]
            )
            return (int(doc["seq"]), int(doc.get("epoch") or 0)) if doc else (0, 0)

        values = await asyncio.gather(*(one(cid) for cid in ids))
        return dict(zip(ids, values, strict=True))

    async def epoch_of(self, conversation_id: str) -> int:
        """The epoch new entries of this conversation get (``conversation:joined``)."""
        if conversation_id in self._epochs and conversation_id in self._next_seq:
            return self._epochs[conversation_id]
        last, epoch = (await self._load_sequences([conversation_id]))[conversation_id]
        self._remember(conversation_id, last + 1)
        self._epochs[conversation_id] = epoch
        return epoch

    async def _append_events(
        self, groups: Mapping[str, Sequence[PendingEvent]], strict: Set[str] = frozenset()
    ) -> dict[str, list[AppendResult]]:
        """Store each conversation's frames in order with consecutive seqs, in one
        ordered ``insert_many`` for all of them; never a gap, never a duplicate.

        The first seq tried is this replica's cache, else the log's maximum + 1. An ordered
        insert stops at the first duplicate key: everything before it is stored (a prefix per
        conversation, so a crash or a collision never leaves a hole); a taken seq re-reads the
        maximum of every conversation still to be written, a stored clientMessageId returns
        the earlier frame; the rest is retried, but for a ``strict`` conversation (authorized
        from a cache valid only while nobody else writes it, authcache.py) whose maximum moved:
        its entries not stored yet get :data:`STALE`.
        """
        results: dict[str, list[AppendResult | None]] = {
            cid: [None] * len(evts) for cid, evts in groups.items()
        }
        pos = dict.fromkeys(groups, 0)
        nxt: dict[str, int] = {}
        unknown = []
        for cid in groups:
            guess = self._next_seq.get(cid)
            if guess:
                nxt[cid] = guess
            else:
                unknown.append(cid)
        for cid, (last, epoch) in (await self._load_sequences(unknown)).items():
            nxt[cid] = last + 1
            self._epochs[cid] = epoch
        epochs = {cid: self._epochs.get(cid, 0) for cid in groups}
        rounds = 0
        while True:
            docs: list[dict[str, Any]] = []
            frames: list[dict[str, Any]] = []
            owners: list[tuple[str, int]] = []
            for cid, evts in groups.items():
                at = nxt[cid]
                for k in range(pos[cid], len(evts)):
                    if results[cid][k] is not None:
                        continue  # refused by the store: it takes no seq
                    doc, frame = log_entry(cid, at, evts[k], epochs[cid])
                    at += 1
                    docs.append(doc)
                    frames.append(frame)
                    owners.append((cid, k))
            if not docs:
                break
            rounds += 1
            if rounds > MAX_APPEND_ROUNDS:
                raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "the store is too busy, retry")
            refused: int | None = None  # index in docs of an entry the store cannot hold
            try:
                await self.messages.insert_many(docs, ordered=True)
                done = len(docs)
                error: dict[str, Any] | None = None
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or []
                if not errors:
                    raise
                error = errors[0]
                done = int(error["index"])
                if error.get("code") != DUPLICATE_KEY:
                    # The store refused this one entry (ordered: the ones before it are
                    # stored); it fails alone, the rest of the batch goes on.
                    refused = done
                    why = str(error.get("errmsg") or "refused by the store")
            except UNENCODABLE as exc:
                # pymongo could not encode an entry, so nothing from it on was sent (one
                # before it may have been, when the insert took several messages).
                bad = first_unencodable(docs)
                if bad is None:
                    raise
                done = await self._stored_prefix(docs[:bad])
                error, refused, why = {"index": done}, bad, f"{type(exc).__name__}: {exc}"
            first_unstored: set[str] = set()
            for j in range(done):
                cid, k = owners[j]
                results[cid][k] = AppendResult(docs[j]["seq"], frames[j])
                pos[cid] = k + 1
                nxt[cid] = docs[j]["seq"] + 1
            for j in range(done, len(docs)):
                cid, _k = owners[j]
                if cid not in first_unstored:
                    first_unstored.add(cid)
                    nxt[cid] = docs[j]["seq"]  # first one not stored: try that seq again
            if error is None:
                break
            if refused is not None:
                cid, k = owners[refused]
                logger.warning("the store cannot hold an entry of %s: %s", cid, why[:300])
                results[cid][k] = AppendResult(0, {}, error=unstorable())
                continue  # the others again, that one left out (it takes no seq)
            cid, k = owners[done]
            failed = groups[cid][k]
            existing = None
            if failed.client_message_id is not None:
                # A keyed entry's _id is derived from its key: a stored one has this _id.
                existing = await self.messages.find_one({"_id": docs[done]["_id"]})
            if existing is not None:
                # Already stored (a retry racing with its original): answer with that frame,
                # its status as read (statuses.py).
                (frame,) = await statuses.frames(self.totals, [frame_of(existing)])
                results[cid][k] = AppendResult(int(existing["seq"]), frame, duplicate=True)
                pos[cid] = k + 1
                if existing["seq"] == docs[done]["seq"]:
                    nxt[cid] += 1  # the seq tried is the stored entry's own: taken
                # else nxt[cid] stays: that seq is free unless the next round finds otherwise
            else:
                if self.on_collision is not None:
                    self.on_collision()
                # Another replica took this seq: continue after the log's maximum. It is
                # writing these conversations too, most likely, so every conversation still
                # to be written re-reads its maximum now: an ordered insert stops at the
                # first collision, and one round per stale conversation used to make two
                # replicas slower than one.
                rest = list(dict.fromkeys(c for c, _ in owners[done:]))
                for c, (last, epoch) in (await self._last_entries(rest)).items():
                    if c in strict and last + 1 != nxt[c]:
                        for k in range(pos[c], len(groups[c])):
                            results[c][k] = results[c][k] or AppendResult(0, {}, error=STALE)
                    nxt[c] = last + 1
                    epochs[c] = max(epochs[c], epoch)  # it may have begun a new epoch
        out: dict[str, list[AppendResult]] = {}
        for cid, res in results.items():
            self._remember(cid, nxt[cid])
            self._epochs[cid] = epochs[cid]
            out[cid] = [r for r in res if r is not None]
        return out

    async def _stored_prefix(self, docs: Sequence[dict[str, Any]]) -> int:
        """How many of ``docs`` (an ordered insert's first ones) are stored: pymongo sends a
        large insert in several messages, so the ones before an unencodable entry may be."""
        if not docs:
            return 0
        ids = [d["_id"] for d in docs]
        found = await self.messages.find({"_id": {"$in": ids}}, {"_id": 1}).to_list()
        have = {d["_id"] for d in found}
        n = 0
        while n < len(ids) and ids[n] in have:
            n += 1
        return n

    async def frames_by_client_ids(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Stored frames of these (conversationId, clientMessageId) pairs (messages and
        other events: an event first), in one query by their ``_id`` (idempotency.entry_id)."""
        ids = {
            entry_id(kind, cid, cmid): (cid, cmid)
            for cid, cmids in wanted.items()
            for cmid in cmids
            for kind in ("message", "event")
        }
        if not ids:
            return {}
        docs = await self.messages.find({"_id": {"$in": list(ids)}}).to_list()
        # A message and another event with the same key: the event's (a keyed command's).
        docs.sort(key=lambda d: LOG_EVENT in d)
        found = await statuses.frames(self.totals, [frame_of(d) for d in docs])
        return {ids[d["_id"]]: f for d, f in zip(docs, found, strict=True)}

    async def events_since(
        self, conversation_id: str, after_seq: int, until_seq: int | None, limit: int
    ) -> list[dict[str, Any]]:
        bounds: dict[str, int] = {"$gt": after_seq}
        if until_seq is not None:
            bounds["$lte"] = until_seq
        docs = (
            await self.messages.find({"conversationId": conversation_id, "seq": bounds})
            .sort("seq", ASCENDING)
            .limit(limit)
            .to_list()
        )
        return await statuses.frames(self.totals, [frame_of(d) for d in docs])

    # ------------------------------------------------------------ messages

    async def insert_messages(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        try:
            await self.messages.insert_many([message_doc(m) for m in messages], ordered=False)
        except BulkWriteError as exc:
            # Re-applying an event whose message is already stored is fine; anything else not.
            other = [
                e for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY
            ]
            if other:
                raise

    async def turn_answered(self, conversation_id: str, message_id: str, seq: int) -> bool:
        """Whether an agent's final answer (``text`` or ``error``) to the user message at
        ``seq`` is in the log (the agent watch, rarely: only for an agent gone offline)."""
        doc = await self.messages.find_one(
            {
                "conversationId": conversation_id,
                "seq": {"$gt": seq},
                "parentMessageId": message_id,
                "role": Role.ASSISTANT.value,
                "messageType": {"$in": [MessageType.TEXT.value, MessageType.ERROR.value]},
            },
            {"_id": 1},
        )
        return doc is not None
