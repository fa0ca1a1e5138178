"""Which messages reached a connection other than their author's (issue 17, protocol 3.6).

The gateways report, per conversation, how far each principal's connections received it.
A message is ``delivered`` once a principal other than its author received it. Nothing of
the message is written for that: per conversation the replica that owns it
(docs/affinity.md) keeps a watermark (domain/delivered.py: the two highest cursors) and
stores it with the conversation's totals, one small update per conversation per receipts
window; reads derive each message's ``messageStatus`` from it. (Until 2026-11-30 every
delivered message was updated in the log, which cost the store as much as its insert,
under the same collection lock as the inserts: docs/benchmarks.md, issue 16.)

What stays in memory is only what decides whether a window changed some message's status
(``message:delivered`` is sent only then): per conversation the highest seq looked at
(``floor``) and the messages at or below it that the mark does not deliver yet (``waiting``:
seq → author, the newest ``WAITING_MAX``). The messages a replica stores itself wait without
a read (``stored``); a report above the floor reads only the entries above it (the newest
``LOOKBACK`` of them). A message that fell out of ``waiting`` (or below a first read) is in
the ``unknown`` range: when the mark moves over it, that range is read to know whether
something changed. Nothing is bounded that a user sees: a message is delivered on read as
soon as the mark covers it, however old.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from parley_contract.events import PrincipalKind
from parley_conversation.domain.delivered import FIELDS, SENT, Mark, mark_of

LOOKBACK: Final = 200  # entries a report reads at most above the floor
WAITING_MAX: Final = 200
MAX_CONVERSATIONS: Final = 10_000
# Entries read at most to decide whether the mark moving over the unknown range changed a
# status; past it, the window counts as having changed one (an extra event, never a lost one).
UNKNOWN_READ_MAX: Final = 1_000
# Reads in flight at once: the store serves each connection in a thread of its own, so a
# window's hundred reads at once made every other request (the log's inserts) wait.
READS_AT_ONCE: Final = 4
IN_CHUNK: Final = 50

Who = tuple[PrincipalKind, str]
WriteMarks = Callable[[Mapping[str, Mark]], Awaitable[bool]]
_ENTRY: Final = {"seq": 1, "createdBy": 1, "messageStatus": 1, "role": 1}


class NotRecorded(Exception):
    """The watermarks of a window could not be written (the store): nothing was applied."""


@dataclass
class _Conv:
    mark: Mark  # as stored (or about to be, under the lock)
    floor: int  # the entries up to here were looked at
    waiting: dict[int, str | None] = field(default_factory=dict)  # seq → author
    # (lo, hi]: seqs at or below the floor whose entries are not in ``waiting`` and may be
    # undelivered (fell out of it, or were below the first read); empty when hi <= lo.
    unknown: tuple[int, int] = (0, 0)

    def wait(self, seq: int, author: str | None) -> None:
        if self.mark.delivers(seq, author):
            return
        self.waiting[seq] = author
        while len(self.waiting) > WAITING_MAX:
            self.forget(min(self.waiting))

    def forget(self, seq: int) -> None:
        del self.waiting[seq]
        self.not_known(seq - 1, seq)

    def not_known(self, lo: int, hi: int) -> None:
        """Add (lo, hi] to the unknown range (one range: the known seqs between the two
        are read again if need be, which changes nothing)."""
        was_lo, was_hi = self.unknown
        self.unknown = (min(lo, was_lo), max(hi, was_hi)) if was_hi > was_lo else (lo, hi)


@dataclass
class _Plan:
    cid: str
    state: _Conv
    mark: Mark
    changed: list[int]  # waiting seqs the new mark delivers
    moved: dict[Who, int]


def _spans(old: Mark, new: Mark) -> list[tuple[int, int]]:
    """The seq ranges (lo, hi] where some author's reach grew from ``old`` to ``new``: other
    authors' (top), ``new.by``'s (second), and ``old.by``'s when the top changed hands."""
    spans = [(old.top, new.top), (old.reach(new.by), new.second)]
    if old.by and old.by != new.by:
        spans.append((old.second, new.top))
    return [(lo, hi) for lo, hi in spans if hi > lo]


class Delivery:
    def __init__(
        self,
        messages: AsyncCollection[dict[str, Any]],
        totals: AsyncCollection[dict[str, Any]],
        write: WriteMarks,
    ) -> None:
        self.messages = messages
        self.totals = totals  # where the marks are (conversation_totals)
        self.write = write  # stores marks (the totals writer's write_marks)
        self._convs: OrderedDict[str, _Conv] = OrderedDict()
        self._lock = asyncio.Lock()  # one apply at a time: the states stay consistent
        self._reads = asyncio.Semaphore(READS_AT_ONCE)

    def tracks(self, cid: str) -> bool:
        """Whether this replica keeps ``cid``'s delivery state (it applied a report of it)."""
        return cid in self._convs

    def forget_where(self, which: Callable[[str], bool]) -> None:
        """Drop the states of these conversations (a partition taken or given up: another
        replica may move their marks meanwhile; the next report here reads them again)."""
        for cid in [c for c in self._convs if which(c)]:
            del self._convs[cid]

    def stored(self, cid: str, messages: list[tuple[int, str, str | None]]) -> None:
        """Messages this replica just stored in ``cid`` (seq, id, author; in seq order,
        ``sent``): those that continue the seqs already looked at (``floor``) wait at once,
        so a report that follows needs no read of the log. The owner of a partition writes
        all of its conversations: its reports read nothing (another writer's entries, or a
        durable event in between, leave a gap: the next report reads it)."""
        state = self._convs.get(cid)
        if state is None:
            return  # never reported here: the first report reads its mark and recent log
        for seq, _mid, author in messages:
            if seq != state.floor + 1:
                return
            state.floor = seq
            state.wait(seq, author)

    async def apply(self, cid: str, got: dict[Who, int]) -> dict[Who, int]:
        """One conversation's report (see :meth:`apply_many`)."""
        return (await self.apply_many({cid: got})).get(cid, {})

    async def apply_many(self, reports: dict[str, dict[Who, int]]) -> dict[str, dict[Who, int]]:
        """``reports``: per conversation, how far each principal received it. Moves the
        marks, stores the ones that moved (one write for all conversations, with the
        totals), and returns, per conversation, the principals whose reception changed some
        message's status, with their seq. Raises :class:`NotRecorded` (nothing applied, the
        reports may be applied again) when the write was given up."""
        reports = {cid: got for cid, got in reports.items() if got}
        if not reports:
            return {}
        async with self._lock:
            await self._load([cid for cid in reports if cid not in self._convs])
            plans = await asyncio.gather(*(self._plan(cid, got) for cid, got in reports.items()))
            marks = {p.cid: p.mark for p in plans if p.mark != p.state.mark}
            if marks and not await self.write(marks):
                raise NotRecorded(f"delivery marks of {len(marks)} conversations")
            for p in plans:
                p.state.mark = p.mark
                for seq in p.changed:
                    p.state.waiting.pop(seq, None)
                for seq in [s for s, a in p.state.waiting.items() if p.mark.delivers(s, a)]:
                    del p.state.waiting[seq]  # stored meanwhile, already covered
                lo, hi = p.state.unknown
                p.state.unknown = (max(lo, p.mark.second), hi)
            return {p.cid: p.moved for p in plans if p.moved}

    async def _load(self, cids: list[str]) -> None:
        """The stored marks of conversations not tracked here: tracked from the mark's
        ``second`` (every message at or below it is delivered, whoever wrote it)."""
        chunks = [cids[i : i + IN_CHUNK] for i in range(0, len(cids), IN_CHUNK)]

        async def read(chunk: list[str]) -> list[dict[str, Any]]:
            async with self._reads:
                return await self.totals.find({"_id": {"$in": chunk}}, FIELDS).to_list()

        found = {d["_id"]: d for docs in await asyncio.gather(*map(read, chunks)) for d in docs}
        for cid in cids:
            mark = mark_of(found.get(cid))
            self._convs[cid] = _Conv(mark=mark, floor=mark.second)
        while len(self._convs) > MAX_CONVERSATIONS:
            self._convs.popitem(last=False)

    async def _plan(self, cid: str, got: dict[Who, int]) -> _Plan:
        """What ``got`` does to ``cid``: its new mark, the waiting messages it delivers and
        the principals that delivered them (nothing is changed yet: :meth:`apply_many`)."""
        state = self._convs.get(cid)
        if state is None:  # dropped (too many conversations, or its partition moved)
            await self._load([cid])
            state = self._convs[cid]
        self._convs.move_to_end(cid)
        top = max(got.values())
        if top > state.floor:
            await self._read_above_floor(state, cid, top)
        # No further than the log goes (a report is a gateway's, but a seq past the log's
        # end would deliver messages not yet written).
        got = {w: min(s, state.floor) for w, s in got.items()}
        ids: dict[str, int] = {}
        for (_kind, pid), seq in got.items():
            ids[pid] = max(ids.get(pid, 0), seq)
        old, new = state.mark, state.mark.received(ids)
        plan = _Plan(cid, state, new, [], {})
        if new == old:
            return plan
        for seq, author in state.waiting.items():
            if new.delivers(seq, author):
                plan.changed.append(seq)
                self._credit(plan, got, seq, author)
        if not plan.moved:
            await self._unknown_changed(plan, got, old)
        return plan

    @staticmethod
    def _credit(plan: _Plan, got: dict[Who, int], seq: int, author: str | None) -> None:
        """Name a principal of ``got`` that delivered the message at ``seq``."""
        by = next((w for w, s in got.items() if s >= seq and w[1] != author), None)
        if by is not None:
            plan.moved[by] = got[by]

    async def _read_above_floor(self, state: _Conv, cid: str, top: int) -> None:
        """The entries above the floor up to ``top`` (the newest ``LOOKBACK``: the ones
        skipped below them are unknown); the floor moves to the last entry there is."""
        async with self._reads:
            docs = (
                await self.messages.find(
                    {"conversationId": cid, "seq": {"$gt": state.floor, "$lte": top}}, _ENTRY
                )
                .sort("seq", DESCENDING)
                .limit(LOOKBACK)
                .to_list()
            )
        if not docs:
            return
        docs.reverse()
        first = int(docs[0]["seq"])
        if len(docs) >= LOOKBACK and first - 1 > state.floor:
            state.not_known(state.floor, first - 1)
        for d in docs:
            if "role" in d and d.get("messageStatus") == SENT:
                state.wait(int(d["seq"]), d.get("createdBy"))
        state.floor = max(state.floor, int(docs[-1]["seq"]))

    async def _unknown_changed(self, plan: _Plan, got: dict[Who, int], old: Mark) -> None:
        """Whether the mark moving delivers a message of the unknown range (read back; rare:
        only a conversation with more than ``WAITING_MAX`` undelivered messages, or one first
        seen here far behind its report)."""
        lo, hi = plan.state.unknown
        spans = [(max(a, lo), min(b, hi)) for a, b in _spans(old, plan.mark)]
        spans = [(a, b) for a, b in spans if b > a]
        if not spans:
            return
        low, high = min(a for a, _ in spans), max(b for _, b in spans)
        async with self._reads:
            docs = (
                await self.messages.find(
                    {"conversationId": plan.cid, "seq": {"$gt": low, "$lte": high}}, _ENTRY
                )
                .sort("seq", ASCENDING)
                .limit(UNKNOWN_READ_MAX)
                .to_list()
            )
        for d in docs:
            seq, author = int(d["seq"]), d.get("createdBy")
            if "role" not in d or d.get("messageStatus") != SENT:
                continue
            if not old.delivers(seq, author) and plan.mark.delivers(seq, author):
                self._credit(plan, got, seq, author)
                return
        if len(docs) >= UNKNOWN_READ_MAX:  # not read to the end: say it changed
            for w, s in got.items():
                if s > low:
                    plan.moved[w] = s
