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
- across gateways and conversations: the batched rejoins are answered in rounds
  (:class:`Rejoins`), one round at a time: a round reads the cursors, the conversations
  (with totals) and the names of all its conversations with one ``$in`` read each, and scans
  each log once; what arrives while a round runs (the other gateways' batches of a
  conversation too) waits for the next round. Before rounds, each conversation's group made
  its own five store round trips, and those were the storm's tail (docs/benchmarks.md
  "Reconnect storm", fifth pass).

Each admitted principal gets what its single join would have answered (same ``conversation``,
``lastSeq``, ``epoch``, ``cursors``; its own ``unreadCount`` and ``readSeq``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
from cachetools import TLRUCache
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from parley_contract import commands, envelopes, subjects
from parley_contract.errors import ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal, RejoinRequest
from parley_contract.jsonutil import model_json
from parley_contract.models import Conversation
from parley_contract.routes import QUERY_ROUTE, REJOIN_SUBJECT
from parley_conversation import domain
from parley_conversation.cursors import principal_key

if TYPE_CHECKING:
    from parley_conversation.service import ConversationService

logger = logging.getLogger(__name__)

# How long the conversation read of one batched rejoin may serve the next ones (while the
# log ends at the same seq: :class:`SharedReads`), and for how many conversations.
SHARED_SECONDS = 5.0
SHARED_ENTRIES = 1_000
# In a storm (a round, or the requests waiting, of at least STORM_CONVERSATIONS
# conversations) a round waits GROUP_WINDOW_SECONDS for more before reading: each gateway
# sends one batch per conversation for the members it got in its own window
# (parley_gateway.rejoins), and a round costs about the same store round trips whatever its
# size (docs/benchmarks.md "Reconnect storm").
GROUP_WINDOW_SECONDS = 0.05
STORM_CONVERSATIONS = 16
# Most conversations one round answers (cursors.IN_CHUNK: one `$in` read each).
ROUND_CONVERSATIONS = 50


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
    """The batched rejoins of one replica, answered in rounds, one round at a time: a round
    takes the requests waiting for up to ``ROUND_CONVERSATIONS`` conversations (from every
    gateway) and answers them from one set of reads (:func:`_answer_many`: one read of the
    cursors, of the conversations and of their names for all of them, one log scan each);
    what arrives while a round runs waits for the next. Every request of a round was
    received before the round's reads began (so after its gateway subscribed): each gets
    what a request of its own would have got."""

    def __init__(self, svc: ConversationService) -> None:
        self._svc = svc
        self._pending: dict[str, list[tuple[list[Principal], asyncio.Future[Any]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_round = 0  # conversations in the last round (a storm under way)
        self.shared = SharedReads()
        self._sub: Subscription | None = None
        self._handling: set[asyncio.Task[None]] = set()

    async def listen(self, nc: Client) -> None:
        """Take the batched rejoins on a plain NATS subscription (queue group conversation),
        each request a task through ``serve`` as the partitions' requests (affinity.py), not
        on FastStream's: its consume path cost ~0.24 ms per request, 17 % of the service in
        a storm of ~1,000 requests (docs/benchmarks.md "Reconnect storm", fifth pass)."""
        op = QUERY_ROUTE[REJOIN_SUBJECT].op

        async def work(body: bytes) -> Any:
            return await rejoin(self._svc, body)

        async def handle(msg: Msg) -> None:
            reply = await self._svc.serve(op, msg.data, work)
            if msg.reply:
                try:
                    await msg.respond(reply)
                except nats.errors.Error as exc:
                    logger.warning("rejoin reply not sent: %r", exc)

        async def on_message(msg: Msg) -> None:
            task = asyncio.create_task(handle(msg))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)

        self._sub = await nc.subscribe(
            REJOIN_SUBJECT, queue=subjects.QUEUE_CONVERSATION, cb=on_message
        )

    async def stop_listening(self) -> None:
        """Drain the subscription: the server routes nothing more here, what was received
        is still answered (the service's drain waits for it)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.drain()  # type: ignore[no-untyped-call]
            except nats.errors.Error as exc:
                logger.warning("could not drain the rejoin subscription: %s", exc)

    async def answer(self, cid: str, principals: list[Principal]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.setdefault(cid, []).append((principals, fut))
        if self._task is None:
            self._task = loop.create_task(self._run())
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        try:
            while self._pending:
                # The requests already received join this round; in a storm, those of the
                # next GROUP_WINDOW_SECONDS too (unless a full round is waiting already).
                waiting = len(self._pending)
                storm = max(waiting, self._last_round) >= STORM_CONVERSATIONS
                await asyncio.sleep(
                    GROUP_WINDOW_SECONDS if storm and waiting < ROUND_CONVERSATIONS else 0
                )
                cids = list(self._pending)[:ROUND_CONVERSATIONS]
                groups = {cid: self._pending.pop(cid) for cid in cids}
                self._last_round = len(groups)
                await self._round(groups)
        finally:
            self._task = None
            for group in self._pending.values():
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(asyncio.CancelledError())
            self._pending.clear()

    async def _round(
        self, groups: dict[str, list[tuple[list[Principal], asyncio.Future[Any]]]]
    ) -> None:
        everyone = {cid: [p for ps, _ in group for p in ps] for cid, group in groups.items()}
        try:
            answers = await _answer_many(self._svc, everyone)
        except BaseException as exc:  # every request of the round gets it
            for group in groups.values():
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for cid, group in groups.items():
            data, start = answers[cid], 0
            for principals, fut in group:
                members = data["members"][start : start + len(principals)]
                start += len(principals)
                if not fut.done():
                    fut.set_result({**data, "members": members})


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

    async def read_many(
        self, svc: ConversationService, lasts: dict[str, int]
    ) -> dict[str, _Shared]:
        """The shared part for each conversation of a round that read its lastSeq
        (``lasts``): its entry, or a fresh read (one for all of them)."""
        out: dict[str, _Shared] = {}
        for cid, last in lasts.items():
            entry = self.get(cid, last)
            if entry is not None:
                out[cid] = entry
        missing = [cid for cid in lasts if cid not in out]
        if not missing:
            return out
        at = self._entries.timer()  # before the read: an entry never outlives its age
        convs = await svc.store.get_conversations(missing, with_totals=True)
        found = [cid for cid in missing if cid in convs]
        epochs = dict(
            zip(found, await asyncio.gather(*map(svc.store.epoch_of, found)), strict=True)
        )
        for cid in missing:
            out[cid] = _Shared(lasts[cid], convs.get(cid), epochs.get(cid, 0), at)
            self.put(cid, out[cid])
        return out

    @staticmethod
    async def wires(
        svc: ConversationService,
        entries: dict[str, tuple[_Shared, bool]],
        known: dict[str, str],
    ) -> dict[str, dict[str, Any]]:
        """Each conversation as conversation:joined carries it (``entries``: cid → (its
        entry, whether a name was stored since the entry's names were read)); the names
        missing are read in one go, but for ``known`` (``<kind>:<id>`` → the name just
        stored: the round's own principals)."""
        fresh: dict[str, dict[str, Any]] = {}
        for cid, (entry, renamed) in entries.items():
            if entry.wire is None or renamed:
                assert entry.conv is not None
                last = max(entry.last, entry.conv.last_seq)
                fresh[cid] = model_json(entry.conv.model_copy(update={"last_seq": last}))
        if fresh:
            await svc.receipts.add_names(list(fresh.values()), known)
            for cid, wire in fresh.items():
                entries[cid][0].wire = wire
        return {cid: entry.wire for cid, (entry, _) in entries.items() if entry.wire is not None}


def _expires(_cid: str, entry: _Shared, _now: float) -> float:
    """When a shared read stops serving (``SharedReads``' time-to-use)."""
    return entry.at + SHARED_SECONDS


async def _answer_many(
    svc: ConversationService, groups: dict[str, list[Principal]]
) -> dict[str, dict[str, Any]]:
    """One set of reads for the principals (in order) rejoining each conversation of a
    round (``groups``): the read cursors of all of them, one scan of each log from its
    lowest read cursor (which gives lastSeq too), then the conversations (shared with the
    rounds before while a log ends at the same seq) and the names, for all at once."""
    await svc.sequencer.settle_totals()
    cids = list(groups)
    cursors = await svc.cursors.cursors_of_many(cids)
    seqs: dict[str, dict[Principal, int]] = {}
    for cid in cids:
        read = {(c["kind"], c["principalId"]): c["readSeq"] for c in cursors[cid]}
        seqs[cid] = {p: read.get((p.kind.value, p.id), 0) for p in groups[cid]}
    found = await asyncio.gather(*(svc.cursors.scan(c, seqs[c]) for c in cids))
    scans = dict(zip(cids, found, strict=True))
    lasts = {cid: s.last for cid, s in scans.items() if s.last is not None}
    unknown = [cid for cid in cids if cid not in lasts]
    tails = await asyncio.gather(*map(svc.store.last_seq, unknown))
    lasts.update(zip(unknown, tails, strict=True))
    # lastSeq before the conversation: see the module doc.
    shared = await svc.rejoins.shared.read_many(svc, lasts)
    out: dict[str, dict[str, Any]] = {}
    admitted: dict[str, list[Principal]] = {}
    for cid in cids:
        members: list[dict[str, Any]] = []
        ok: list[Principal] = []
        for p in groups[cid]:
            try:
                domain.authorize(shared[cid].conv, p)
            except ParleyError as exc:
                members.append({"ok": False, "error": envelopes.fail_from(exc)["error"]})
                continue
            members.append({"ok": True})
            ok.append(p)
        out[cid] = {"members": members}
        if shared[cid].conv is None or not ok:
            out[cid].update({"conversation": None, "lastSeq": 0, "epoch": 0})
        else:
            admitted[cid] = ok
    entries: dict[str, tuple[_Shared, bool]] = {}
    known: dict[str, str] = {}  # the names the directory holds now (just stored)
    for cid, ok in admitted.items():
        renamed = False
        for p in dict.fromkeys(ok):
            renamed = await svc.cursors.remember(p.kind, p.id, p.name) or renamed
            if p.name and p.kind is not PrincipalKind.SERVICE:
                known[principal_key(p.kind, p.id)] = p.name
        entries[cid] = (shared[cid], renamed)
    wires = await SharedReads.wires(svc, entries, known)
    counts = await asyncio.gather(
        *(scans[cid].unread({p: seqs[cid][p] for p in ok}) for cid, ok in admitted.items())
    )
    for (cid, ok), unread in zip(admitted.items(), counts, strict=True):
        for m, p in zip((m for m in out[cid]["members"] if m["ok"]), ok, strict=True):
            m["readSeq"] = seqs[cid][p]
            m["unreadCount"] = unread.get(p, 0)
        out[cid].update(
            {
                "conversation": wires[cid],
                "lastSeq": lasts[cid],
                "epoch": shared[cid].epoch,
                "cursors": cursors[cid],
            }
        )
    return out
