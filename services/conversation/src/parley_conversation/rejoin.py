"""The batched rejoin of resumed sessions (issue 16, the reconnect storm).

When a gateway dies, its clients resume on the others at once; each resumed session joins
its conversations again. One ``conversation:join`` each cost 4-6 store reads (settled
totals, lastSeq, the conversation with totals, the epoch, names, cursors, unread), and at
10,000 clients that was the storm's bottleneck. A gateway asks here once per conversation
for all of its members that resume at about the same time (``routes.REJOIN_SUBJECT``,
``internal.RejoinRequest``); this answers them all from one set of reads:

- lastSeq, then the conversation (the same order as a single join: a removal that the
  authorization did not see has a seq above lastSeq, which the gateway replays or delivers
  and evicts on), the epoch, the names and the read cursors: once for the batch;
- authorization: per principal, exactly as a single join (``domain.authorize``) on that
  same read — a principal removed before it gets FORBIDDEN, at its index;
- unread counts: one scan of the log from the lowest read cursor, counted per principal in
  memory; a principal the scan does not cover to its own cap is counted alone;
- across gateways: while one set of reads of a conversation runs, the batched rejoins that
  arrive for it (from the other gateways) wait and share the next set (:class:`Rejoins`).

Each admitted principal gets what its single join would have answered (same ``conversation``,
``lastSeq``, ``epoch``, ``cursors``; its own ``unreadCount`` and ``readSeq``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from parley_contract import commands, envelopes
from parley_contract.errors import ParleyError
from parley_contract.internal import Principal, RejoinRequest
from parley_contract.jsonutil import model_json
from parley_conversation import domain

if TYPE_CHECKING:
    from parley_conversation.service import ConversationService


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

    async def answer(self, cid: str, principals: list[Principal]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(cid, []).append((principals, fut))
        if cid not in self._running:
            self._running[cid] = asyncio.get_running_loop().create_task(self._run(cid))
        return await asyncio.shield(fut)

    async def _run(self, cid: str) -> None:
        try:
            await asyncio.sleep(0)  # the requests already received join this group
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


async def _answer(svc: ConversationService, cid: str, principals: list[Principal]) -> Any:
    """One set of reads for ``principals`` (in order) rejoining ``cid``."""
    await svc.sequencer.settle_totals()
    last = await svc.store.last_seq(cid)  # before the conversation: see the module doc
    conv = await svc.store.get_conversation(cid, with_totals=True)
    members: list[dict[str, Any]] = []
    admitted: list[Principal] = []
    for p in principals:
        try:
            domain.authorize(conv, p)
        except ParleyError as exc:
            members.append({"ok": False, "error": envelopes.fail_from(exc)["error"]})
            continue
        members.append({"ok": True})
        admitted.append(p)
    if conv is None or not admitted:
        return {"conversation": None, "lastSeq": 0, "epoch": 0, "members": members}
    epoch = await svc.store.epoch_of(cid)
    conv = conv.model_copy(update={"last_seq": max(last, conv.last_seq)})
    wire = model_json(conv)
    for p in dict.fromkeys(admitted):
        await svc.cursors.remember(p.kind, p.id, p.name)
    await svc.receipts.add_names([wire])
    cursors = await svc.cursors.cursors_of(cid)
    read = {(c["kind"], c["principalId"]): c["readSeq"] for c in cursors}
    seqs = {p: read.get((p.kind.value, p.id), 0) for p in admitted}
    unread = await svc.cursors.unread_many(cid, seqs)
    for m, p in zip((m for m in members if m["ok"]), admitted, strict=True):
        m["readSeq"] = seqs[p]
        m["unreadCount"] = unread.get(p, 0)
    return {
        "conversation": wire,
        "lastSeq": last,
        "epoch": epoch,
        "cursors": cursors,
        "members": members,
    }
