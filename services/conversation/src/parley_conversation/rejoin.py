"""The batched rejoin of resumed sessions (issue 16, the reconnect storm).

When a gateway dies, its clients resume on the others at once; each resumed session joins
its conversations again. One ``conversation:join`` each cost 4-6 store reads (settled
totals, lastSeq, the conversation with totals, the epoch, names, cursors, unread), and at
10,000 clients that was the storm's bottleneck. A gateway asks here once per conversation
for all of its members that resume at about the same time (``routes.REJOIN_SUBJECT``,
``internal.RejoinRequest``); this answers them all from one set of reads:

- the read cursors, then one scan of the log from the lowest of them, which gives the
  unread counts (per principal, in memory; a principal the scan does not cover to its own
  cap is counted alone) and lastSeq (its last entry; read alone when the scan stops short);
- then the conversation (the same order as a single join: a removal that the authorization
  did not see has a seq above lastSeq, which the gateway replays or delivers and evicts
  on), its epoch and names — shared with the batches of the last ``SHARED_SECONDS`` that
  read the same lastSeq (:class:`SharedReads`: a storm's members come back a few at a time);
- authorization: per principal, exactly as a single join (``domain.authorize``) on that
  same read — a principal removed before it gets FORBIDDEN, at its index;
- across gateways: while one set of reads of a conversation runs, the batched rejoins that
  arrive for it (from the other gateways) wait and share the next set (:class:`Rejoins`).

Each admitted principal gets what its single join would have answered (same ``conversation``,
``lastSeq``, ``epoch``, ``cursors``; its own ``unreadCount`` and ``readSeq``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cachetools import TLRUCache
from pydantic import ValidationError

from parley_contract import commands, envelopes
from parley_contract.errors import ParleyError
from parley_contract.internal import Principal, RejoinRequest
from parley_contract.jsonutil import model_json
from parley_contract.models import Conversation
from parley_conversation import domain

if TYPE_CHECKING:
    from parley_conversation.service import ConversationService

# How long the conversation read of one batched rejoin may serve the next ones (while the
# log ends at the same seq: :class:`SharedReads`), and for how many conversations.
SHARED_SECONDS = 5.0
SHARED_ENTRIES = 1_000
# In a storm (groups of at least STORM_CONVERSATIONS conversations under way) a group waits
# GROUP_WINDOW_SECONDS for the other gateways' batches of its conversation before reading:
# each gateway sends one batch per conversation for the members it got in its own window
# (parley_gateway.rejoins), and each group costs the same two store round trips whatever
# its size (docs/benchmarks.md "Reconnect storm").
GROUP_WINDOW_SECONDS = 0.05
STORM_CONVERSATIONS = 16


def decode(body: bytes) -> RejoinRequest:
    try:
        return RejoinRequest.model_validate_json(body)
    except ValidationError as exc:
        raise commands.validation_error(exc) from None


async def rejoin(svc: ConversationService, body: bytes) -> Any:
    """``internal.RejoinReply`` data for a ``RejoinRequest``."""
    req = decode(body)
    return await svc.rejoins.answer(req.conversation_id, req.principals)


class Rejoins:
    """The batched rejoins of one replica, grouped per conversation across gateways: while
    one group's reads of a conversation are running, the requests that arrive for it wait
    and are answered together by the next group. Every request of a group was received
    before the group's reads began (so after its gateway subscribed): each gets what a
    request of its own would have got."""

    def __init__(self, svc: ConversationService) -> None:
        self._svc = svc
        self._pending: dict[str, list[tuple[list[Principal], asyncio.Future[Any]]]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self.shared = SharedReads()

    async def answer(self, cid: str, principals: list[Principal]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(cid, []).append((principals, fut))
        if cid not in self._running:
            self._running[cid] = asyncio.get_running_loop().create_task(self._run(cid))
        return await asyncio.shield(fut)

    async def _run(self, cid: str) -> None:
        try:
            # The requests already received join this group; in a storm, those of the
            # next GROUP_WINDOW_SECONDS too.
            storm = len(self._running) >= STORM_CONVERSATIONS
            await asyncio.sleep(GROUP_WINDOW_SECONDS if storm else 0)
            while group := self._pending.pop(cid, None):
                everyone = [p for principals, _ in group for p in principals]
                try:
                    data = await _answer(self._svc, cid, everyone)
                except BaseException as exc:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                start = 0
                for principals, fut in group:
                    members = data["members"][start : start + len(principals)]
                    start += len(principals)
                    if not fut.done():
                        fut.set_result({**data, "members": members})
        finally:
            del self._running[cid]
            for _, fut in self._pending.pop(cid, []):
                if not fut.done():
                    fut.set_exception(asyncio.CancelledError())


@dataclass
class _Shared:
    """What a rejoin of a conversation shares with the ones right after it, while the log
    ends at the same seq: the conversation, its epoch, and its wire form with totals and
    names (made when someone is admitted: after their names are remembered)."""

    last: int
    conv: Conversation | None
    epoch: int
    at: float
    wire: dict[str, Any] | None = None


class SharedReads:
    """The conversation reads of recent rejoins, per conversation (issue 16: the storm's
    members of one conversation come back a few at a time, each batch read it again).

    An entry serves a batch only while the log still ends at the seq read right before the
    entry's conversation was read (``last``), and for at most ``SHARED_SECONDS``. That is
    as safe as a fresh read: every change of a conversation's participants (update,
    delete) writes the document, then appends its event to the log; a change the entry
    does not show was written after the entry's read, so its event has a seq above
    ``last``: the batch reads a higher lastSeq and reads the conversation again, or (the
    event appended after the batch read lastSeq) the gateway, subscribed before asking,
    gets the event live and evicts, as after a single join that read just before it.

    A time-aware LRU cache (``cachetools.TLRUCache``) whose time runs from the entry's
    ``at``, taken *before* its read (:meth:`read`), not from when it is put (as a TTLCache's
    would): the entry never serves past ``SHARED_SECONDS`` after the state it shows. The
    expired entries go at each put (a storm's entries do not outlive it), and the least
    recently used beyond ``size``."""

    def __init__(
        self, size: int = SHARED_ENTRIES, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: TLRUCache[str, _Shared, float] = TLRUCache(size, _expires, timer)

    def get(self, cid: str, last: int) -> _Shared | None:
        entry = self._entries.get(cid)  # None past its time
        if entry is not None and entry.last != last:
            self._entries.pop(cid, None)  # the log moved on
            return None
        return entry

    def put(self, cid: str, entry: _Shared) -> None:
        """Keep ``entry`` (not when its time is up already)."""
        self._entries[cid] = entry

    def __len__(self) -> int:
        return len(self._entries)

    async def read(self, svc: ConversationService, cid: str, last: int) -> _Shared:
        """The shared part for a batch that read ``last``: the entry, or a fresh read."""
        entry = self.get(cid, last)
        if entry is not None:
            return entry
        at = self._entries.timer()  # before the read: the entry never outlives its age
        conv = await svc.store.get_conversation(cid, with_totals=True)
        epoch = await svc.store.epoch_of(cid) if conv is not None else 0
        entry = _Shared(last, conv, epoch, at)
        self.put(cid, entry)
        return entry

    @staticmethod
    async def wire(svc: ConversationService, entry: _Shared, *, renamed: bool) -> dict[str, Any]:
        """The conversation as conversation:joined carries it (``renamed``: a name was
        stored since the entry's names were read)."""
        if entry.wire is None or renamed:
            assert entry.conv is not None
            conv = entry.conv.model_copy(update={"last_seq": max(entry.last, entry.conv.last_seq)})
            wire = model_json(conv)
            await svc.receipts.add_names([wire])
            entry.wire = wire
        return entry.wire


def _expires(_cid: str, entry: _Shared, _now: float) -> float:
    """When a shared read stops serving (``SharedReads``' time-to-use)."""
    return entry.at + SHARED_SECONDS


async def _answer(svc: ConversationService, cid: str, principals: list[Principal]) -> Any:
    """One set of reads for ``principals`` (in order) rejoining ``cid``: the read cursors
    and one scan of the log from the lowest (which gives lastSeq too), then the
    conversation (shared with the batches before while the log ends at the same seq)."""
    await svc.sequencer.settle_totals()
    cursors = await svc.cursors.cursors_of(cid)
    read = {(c["kind"], c["principalId"]): c["readSeq"] for c in cursors}
    seqs = {p: read.get((p.kind.value, p.id), 0) for p in principals}
    scan = await svc.cursors.scan(cid, seqs)
    last = scan.last
    if last is None:
        last = await svc.store.last_seq(cid)
    # lastSeq before the conversation: see the module doc.
    shared = await svc.rejoins.shared.read(svc, cid, last)
    members: list[dict[str, Any]] = []
    admitted: list[Principal] = []
    for p in principals:
        try:
            domain.authorize(shared.conv, p)
        except ParleyError as exc:
            members.append({"ok": False, "error": envelopes.fail_from(exc)["error"]})
            continue
        members.append({"ok": True})
        admitted.append(p)
    if shared.conv is None or not admitted:
        return {"conversation": None, "lastSeq": 0, "epoch": 0, "members": members}
    renamed = False
    for p in dict.fromkeys(admitted):
        renamed = await svc.cursors.remember(p.kind, p.id, p.name) or renamed
    wire = await svc.rejoins.shared.wire(svc, shared, renamed=renamed)
    unread = await scan.unread({p: seqs[p] for p in admitted})
    for m, p in zip((m for m in members if m["ok"]), admitted, strict=True):
        m["readSeq"] = seqs[p]
        m["unreadCount"] = unread.get(p, 0)
    return {
        "conversation": wire,
        "lastSeq": last,
        "epoch": shared.epoch,
        "cursors": cursors,
        "members": members,
    }
