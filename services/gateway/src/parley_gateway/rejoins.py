"""Batched rejoins of resumed sessions (issue 16, the reconnect storm).

When a gateway dies its clients resume here at once, and each resumed session joins its
conversations again. Instead of one ``conversation:join`` request per connection and
conversation, the rejoins of one conversation are coalesced: at most one batched request
(``routes.REJOIN_SUBJECT``) per conversation is in flight; what arrives meanwhile, or within
``WINDOW_SECONDS`` of the first, goes in the next one. Under load the batches grow by
themselves (the longer a request takes, the more members wait for the next one).

Every caller has subscribed to the conversation (``Fanout.acquire``) before it queues here,
so the service reads lastSeq after every member of the batch subscribed, as a single join
does; the service authorizes each principal on its own (a removed one gets FORBIDDEN).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from parley_contract import envelopes
from parley_contract.errors import ErrorCode
from parley_contract.internal import MAX_REJOIN_PRINCIPALS, Principal
from parley_contract.routes import REJOIN_SUBJECT
from parley_runtime import requests

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 0.005  # the first rejoin of a conversation waits this long for company
# In a storm (rejoins of at least STORM_CONVERSATIONS conversations under way here) it waits
# STORM_WINDOW_SECONDS: a batch costs the conversation service and the store about the same
# whatever its size (two store round trips), and a conversation's members resume a few
# milliseconds apart, so a longer window sends fewer, fuller batches (docs/benchmarks.md
# "Reconnect storm"); a resume's rejoin waits at most that much longer.
STORM_WINDOW_SECONDS = 0.05
STORM_CONVERSATIONS = 16
# A batch that timed out is asked once more (a read: safe to repeat): it stands for every
# member that resumed with it, and in a storm the service is slow rather than gone.
ATTEMPTS = 2
_SHARED = ("conversation", "lastSeq", "epoch", "cursors")
_OWN = ("unreadCount", "readSeq")

Request = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
_Waiter = tuple[Principal, asyncio.Future[dict[str, Any]]]


class Rejoins:
    """Coalesces the rejoins of each conversation into batched requests."""

    def __init__(
        self, request: Request, instance_id: str, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self._request = request
        self._instance_id = instance_id
        self._on_batch = on_batch
        self._pending: dict[str, list[_Waiter]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def authorize(self, cid: str, principal: Principal) -> dict[str, Any]:
        """The envelope a single ``conversation:join`` request would have answered for this
        principal (its ``data``: conversation, lastSeq, epoch and its receipts)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(cid, []).append((principal, fut))
        if cid not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._run(cid))
            self._tasks[cid] = task
        return await asyncio.shield(fut)  # a cancelled caller leaves the batch's answer unread

    async def _run(self, cid: str) -> None:
        try:
            storm = len(self._tasks) >= STORM_CONVERSATIONS
            await asyncio.sleep(STORM_WINDOW_SECONDS if storm else WINDOW_SECONDS)
            while batch := self._pending.pop(cid, None):
                for i in range(0, len(batch), MAX_REJOIN_PRINCIPALS):
                    await self._send(cid, batch[i : i + MAX_REJOIN_PRINCIPALS])
        except BaseException as exc:
            for _, fut in self._pending.pop(cid, []):
                if not fut.done():
                    fut.set_exception(exc)
            raise
        finally:
            del self._tasks[cid]

    async def _send(self, cid: str, batch: list[_Waiter]) -> None:
        try:
            answers = await self._ask(cid, [p for p, _ in batch])
        except BaseException as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            raise
        for (_, fut), answer in zip(batch, answers, strict=True):
            if not fut.done():
                fut.set_result(answer)

    async def _ask(self, cid: str, principals: list[Principal]) -> list[dict[str, Any]]:
        if self._on_batch is not None:
            self._on_batch(len(principals))
        body = {
            "conversationId": cid,
            "principals": [p.model_dump(mode="json") for p in principals],
            "instanceId": self._instance_id,
        }
        for _ in range(ATTEMPTS):
            reply = await self._request(REJOIN_SUBJECT, body)
            if reply.get("success") or requests.error_of(reply).code is not ErrorCode.TIMEOUT:
                break
        if not reply.get("success"):
            return [reply] * len(principals)  # the whole request failed: each gets its error
        data = reply.get("data")
        if not isinstance(data, dict):
            data = {}
        members = data.get("members")
        if not isinstance(members, list) or len(members) != len(principals):
            logger.error("malformed rejoin reply for %s: %r", cid, str(reply)[:200])
            bad = envelopes.fail(ErrorCode.INTERNAL_ERROR, "malformed service reply")
            return [bad] * len(principals)
        shared = {k: data[k] for k in _SHARED if k in data}
        out: list[dict[str, Any]] = []
        for m in members:
            if isinstance(m, dict) and m.get("ok") is True:
                out.append(envelopes.ok({**shared, **{k: m[k] for k in _OWN if k in m}}))
            else:
                err = m.get("error") if isinstance(m, dict) else None
                out.append(envelopes.fail_from(requests.error_of({"error": err})))
        return out
