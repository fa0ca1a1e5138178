"""Which messages reached a connection other than their author's (issue 17, protocol 3.6).

The gateways report, per conversation, how far each principal's connections received it.
A message turns ``delivered`` once a principal other than its author received it. Per
conversation this replica keeps, in memory, the highest seq it has looked at (``floor``) and
the messages above the floors it looked at that are still ``sent`` (``waiting``: only their
author's connections had them, by seq). The reports of a window (merged by
parley_conversation.receipts) read only the log entries above each floor (one range query on
``(conversationId, seq)`` per conversation, a few at a time) and mark delivered the waiting
ones that someone else received, all conversations in one update by ``_id``: one write per
window, whatever the number of conversations, members and gateways reporting. The messages a
replica stores itself wait without a read (``stored``): on a partition's owner
(docs/affinity.md) a report reads nothing at all.

Bounded: ``WAITING_MAX`` waiting messages per conversation (older ones drop out and stay
``sent``), ``MAX_CONVERSATIONS`` conversations (least recently reported first out). A
conversation first seen (a replica's start) begins ``LOOKBACK`` seqs below its report, so a
restart never scans a long history. Authorship is by id (``createdBy``): a user whose id
equals an agent's does not deliver that agent's messages (any other member does).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

from pymongo.asynchronous.collection import AsyncCollection

from parley_contract.events import PrincipalKind
from parley_contract.models import MessageStatus

LOOKBACK: Final = 200
WAITING_MAX: Final = 200
MAX_CONVERSATIONS: Final = 10_000
# Message ids per update: the store holds the log's lock for a whole update_many (the
# inserts of both replicas wait behind it): 50-id updates took ~100-130 ms each at 400
# messages/s (pymongo command timings, 06:19), a 200-id one held the lock for ~4 times that.
UPDATE_CHUNK: Final = 50
# Range reads in flight at once: the store serves each connection in a thread of its own, so
# a window's hundred reads at once made every other request (the log's inserts) wait.
READS_AT_ONCE: Final = 4

Who = tuple[PrincipalKind, str]


@dataclass
class _Conv:
    floor: int
    waiting: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # seq → id, author


class Delivery:
    def __init__(self, messages: AsyncCollection[dict[str, Any]]) -> None:
        self.messages = messages
        self._convs: OrderedDict[str, _Conv] = OrderedDict()
        self._lock = asyncio.Lock()  # one apply at a time: the waiting sets stay consistent
        self._reads = asyncio.Semaphore(READS_AT_ONCE)

    def _state(self, cid: str, top: int) -> _Conv:
        state = self._convs.get(cid)
        if state is None:
            state = _Conv(floor=max(0, top - LOOKBACK))
            self._convs[cid] = state
            while len(self._convs) > MAX_CONVERSATIONS:
                self._convs.popitem(last=False)
        else:
            self._convs.move_to_end(cid)
        return state

    def tracks(self, cid: str) -> bool:
        """Whether this replica keeps ``cid``'s delivery state (it applied a report of it)."""
        return cid in self._convs

    def stored(self, cid: str, messages: list[tuple[int, str, str | None]]) -> None:
        """Messages this replica just stored in ``cid`` (seq, id, author; in seq order,
        ``sent``): those that continue the seqs already looked at (``floor``) wait at once,
        so a report that follows needs no read of the log. The owner of a partition writes
        all of its conversations: its reports read nothing (another writer's entries, or a
        durable event in between, leave a gap: the next report reads it)."""
        state = self._convs.get(cid)
        if state is None:
            return  # never reported here: the first report reads its LOOKBACK
        for seq, mid, author in messages:
            if seq != state.floor + 1:
                return
            state.waiting[seq] = (mid, author)
            state.floor = seq
            if len(state.waiting) > WAITING_MAX:
                del state.waiting[min(state.waiting)]

    async def apply(self, cid: str, got: dict[Who, int]) -> dict[Who, int]:
        """One conversation's report (see :meth:`apply_many`)."""
        return (await self.apply_many({cid: got})).get(cid, {})

    async def apply_many(self, reports: dict[str, dict[Who, int]]) -> dict[str, dict[Who, int]]:
        """``reports``: per conversation, how far each principal received it. Marks the
        messages they deliver; returns, per conversation, the principals whose reception
        delivered something, with their seq. One range read per conversation
        (concurrently) and one update for the messages of all of them (``UPDATE_CHUNK`` ids
        each). Writes are what the store serializes (one lock per collection, the log's
        inserts behind them): the receipts of a window cost one update, not one per
        conversation per report (docs/benchmarks.md, "Conversation affinity")."""
        reports = {cid: got for cid, got in reports.items() if got}
        if not reports:
            return {}
        async with self._lock:
            picked = await asyncio.gather(
                *(self._delivered_by(cid, got) for cid, got in reports.items())
            )
            ids = [mid for found, _ in picked for mid, _ in found.values()]
            sent, delivered = MessageStatus.SENT.value, MessageStatus.DELIVERED.value
            try:
                for i in range(0, len(ids), UPDATE_CHUNK):
                    await self.messages.update_many(
                        {"_id": {"$in": ids[i : i + UPDATE_CHUNK]}, "messageStatus": sent},
                        {"$set": {"messageStatus": delivered}},
                    )
            except BaseException:
                # Not (all) marked: they wait again, for the next report (a repeat is a no-op).
                for cid, (found, _) in zip(reports, picked, strict=True):
                    if cid in self._convs:
                        self._convs[cid].waiting.update(found)
                raise
            return {cid: moved for cid, (_, moved) in zip(reports, picked, strict=True) if moved}

    async def _delivered_by(
        self, cid: str, got: dict[Who, int]
    ) -> tuple[dict[int, tuple[str, str | None]], dict[Who, int]]:
        """``cid``'s waiting messages that ``got`` delivers (taken out of the waiting ones:
        seq → id, author), and the principals that delivered them."""
        top = max(got.values())
        state = self._state(cid, top)
        if top > state.floor:
            async with self._reads:
                docs = await self.messages.find(
                    {"conversationId": cid, "seq": {"$gt": state.floor, "$lte": top}},
                    {"seq": 1, "createdBy": 1, "messageStatus": 1, "role": 1},
                ).to_list()
            for d in docs:
                if "role" in d and d.get("messageStatus") == MessageStatus.SENT.value:
                    state.waiting[int(d["seq"])] = (str(d["_id"]), d.get("createdBy"))
            state.floor = max(state.floor, top)
            for seq in sorted(state.waiting)[: max(0, len(state.waiting) - WAITING_MAX)]:
                del state.waiting[seq]
        found: dict[int, tuple[str, str | None]] = {}
        moved: dict[Who, int] = {}
        for seq in sorted(state.waiting):
            _mid, author = state.waiting[seq]
            by = next((w for w, s in got.items() if s >= seq and w[1] != author), None)
            if by is None:
                continue
            found[seq] = state.waiting.pop(seq)
            moved[by] = got[by]
        return found, moved
