"""Group commit of durable writes, per replica, across conversations.

Every durable event (a new message or any other durable frame) is queued here. One worker
takes everything queued (up to ``max_batch``) and commits it with a fixed number of store
round trips whatever the number of conversations in it: one read of the conversations
(authorizes every send; a partition's owner skips it, authcache.py) and one ordered
``insert_many`` into the conversation log (each message is its own log entry and claims its
seq, see :mod:`parley_conversation.log`); the
totals follow in the background (one bulk update, merged across batches). A retried
``clientMessageId`` is caught by the log's ``_id`` (a keyed message's id is derived from
it: ``entries.message_as_stored``; no lookup per batch); retries inside one batch wait for
the first. Then it publishes the frames in seq order and only then resolves the callers.
While a batch is being written the next one accumulates, so the batch size grows with the
load (no timer, no idle latency).

One entry the store cannot hold (contract validation should have refused it: see
parley_contract.limits) fails alone: the store skips it and writes the rest of the batch, and
only its sender gets the error (VALIDATION_ERROR), never the others batched with it.

What is queued, and how each write is answered: jobs.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from pymongo.errors import PyMongoError

from parley_contract import jsonutil, subjects
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.internal import Principal
from parley_contract.models import Conversation, Message
from parley_conversation.authcache import AuthCache
from parley_conversation.entries import AppendResult, MessageTotals, totals_of
from parley_conversation.jobs import (
    EventJob,
    Job,
    SendJob,
    SendResult,
    admit,
    fail,
    pending_of,
    resolve_by_author,
)
from parley_conversation.log import STALE
from parley_conversation.repository import Repository
from parley_conversation.totals_writer import TotalsWriter

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
# A durable frame with its NATS headers (subjects.durable_headers).
PublishFrame = Callable[[str, bytes, dict[str, str]], Awaitable[None]]
# After a batch, per conversation: quick work done at once; what it returns (if anything),
# in the background. Most conversations need no task of their own.
OnStored = Callable[[Conversation, list[Message]], Coroutine[Any, Any, None] | None]


_T = TypeVar("_T")


@dataclass(slots=True)
class Written:
    """A batch stored in the log, to be announced (Sequencer._announce)."""

    jobs: list[tuple[str, Job]]
    live: dict[str, list[Job]]  # per conversation, the jobs that went to the store
    followers: dict[tuple[str, str], list[SendJob]]  # retries inside the batch, by key
    results: dict[str, list[AppendResult]]
    convs: dict[str, Conversation]
    stored_by: dict[str, list[Message]]


class Sequencer:
    def __init__(
        self,
        store: Repository,
        publish: Publish,
        on_stored: OnStored | None = None,
        *,
        max_batch: int = 500,
        on_batch: Callable[[int], None] | None = None,
        on_projection_failure: Callable[[], None] | None = None,
        totals_interval: float = 0.0,
        max_wait: float = 0.0,
        on_committed: Callable[[str, int, int], Awaitable[None]] | None = None,
        publish_frame: PublishFrame | None = None,
        auth: AuthCache | None = None,
    ) -> None:
        self._store = store
        # The owner's conversations, when it may skip the authorizing read (authcache.py).
        self.auth = auth
        self._publish = publish
        # Durable frames go out with their headers when given (gateways order them by those).
        self._publish_frame = publish_frame
        self._on_stored = on_stored
        self._on_committed = on_committed  # (conversation, epoch, highest seq) per batch
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: list[tuple[str, Job]] = []
        self._worker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self.last_batch_at = 0.0  # time.monotonic() of the last committed batch
        # The conversation totals, written in the background, merged (totals_writer.py).
        self.totals = TotalsWriter(
            store, interval=totals_interval, on_failure=on_projection_failure
        )
        # Load shedding: while the oldest queued write has waited more than max_wait seconds
        # for its batch, new sends are refused at once with SERVICE_UNAVAILABLE, before
        # anything is stored, instead of queueing until the gateway's request times out
        # (when it could still be stored later). Measured waiting, not a cost model: with
        # group commit a batch takes everything queued, so the head waits longer than one
        # batch only when the queue outgrows the store. 0: never refused.
        self._max_wait = max_wait
        self._queued_at: list[float] = []  # time.monotonic() of each entry of _queue

    @property
    def in_flight(self) -> int:
        return len(self._queue) + (1 if self._worker is not None else 0)

    def _submit(self, conversation_id: str, job: Job) -> None:
        if self._closing:
            raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "this replica is shutting down, retry")
        self._queue.append((conversation_id, job))
        self._queued_at.append(time.monotonic())
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="sequencer")

    @property
    def oldest_wait(self) -> float:
        """Seconds the oldest queued write has been waiting for its batch (0: none queued)."""
        return time.monotonic() - self._queued_at[0] if self._queued_at else 0.0

    async def send(self, principal: Principal, message: Message) -> SendResult:
        """Authorize, store and publish a message; returns it as stored (with seq)."""
        return await self.queue_send(principal, message)

    def queue_send(self, principal: Principal, message: Message) -> asyncio.Future[SendResult]:
        """``send`` without the wait: queued now (sends queued one after the other, in one
        loop step, are stored in that order); the future is its answer."""
        if self._max_wait > 0 and (waited := self.oldest_wait) > self._max_wait:
            raise ParleyError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "the conversation service is overloaded: the message was not stored, retry",
                {"retryAfterMs": int(waited * 1000)},
            )
        fut: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self._submit(message.conversation_id, SendJob(principal, message, fut))
        return fut

    async def append(
        self,
        conversation_id: str,
        event: Event,
        build: Callable[[int], Any],
        *,
        key: str | None = None,
    ) -> AppendResult:
        """Store and publish one durable frame (``build(seq)`` gives its data); with ``key``
        at most once per conversation (a repeat: ``duplicate`` and the stored frame)."""
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._submit(conversation_id, EventJob(event, build, fut, key))
        return await fut

    async def drain(self) -> None:
        """Refuse new work and wait for every queued batch to be written and answered."""
        self._closing = True
        self.totals.closing()
        while self._worker is not None or self._background or self.totals.running:
            await asyncio.gather(
                *([self._worker] if self._worker else []),
                *self._background,
                return_exceptions=True,
            )
            await self.totals.drain()

    async def settle_totals(self) -> None:
        """Wait until the totals of the batches this replica stored so far are written
        (not the ones stored after this call: it ends even under a steady load)."""
        await self.totals.settle()

    def _take(self) -> list[tuple[str, Job]]:
        jobs = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        del self._queued_at[: self._max_batch]
        if self._on_batch is not None:
            self._on_batch(len(jobs))
        return jobs

    async def _work(self) -> None:
        """Batches are written one at a time, and each is announced (frames published,
        callers answered) while the next one is being written: the store commits batch N+1
        while this process publishes batch N. Frames still go out in seq order: batch N+1 is
        announced only after batch N."""
        batch: list[tuple[str, Job]] = []  # the batch being written
        writing: asyncio.Task[Written | None] | None = None
        written: Written | None = None  # stored, not announced yet
        try:
            while self._queue or written is not None:
                if self._queue:
                    batch = self._take()
                    writing = asyncio.create_task(self._guarded(batch, self._write(batch)))
                    # Let it reach the store (its first wait) before this batch's announce.
                    await asyncio.sleep(0)
                if written is not None:
                    await self._guarded(written.jobs, self._announce(written))
                    written = None
                if writing is not None:
                    written = await writing
                    writing, batch = None, []
        finally:
            # Only non-empty if this task was cancelled: nobody may wait forever.
            self._worker = None
            if writing is not None:
                writing.cancel()
            rest = [j for _, j in batch + (written.jobs if written else []) + self._queue]
            self._queue.clear()
            self._queued_at.clear()
            fail(rest, ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "write interrupted, retry"))

    async def _guarded(
        self, jobs: list[tuple[str, Job]], step: Coroutine[Any, Any, _T]
    ) -> _T | None:
        """A batch's write or announce; on an error its callers not answered yet fail."""
        try:
            return await step
        except ParleyError as exc:
            fail([j for _, j in jobs], exc)
        except PyMongoError:
            logger.exception("store error while writing a batch")
            fail(
                [j for _, j in jobs],
                ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "the store is unavailable, retry"),
            )
        except Exception:
            logger.exception("unexpected error while writing a batch")
            fail([j for _, j in jobs], ParleyError(ErrorCode.INTERNAL_ERROR, "internal error"))
        return None

    async def _write(self, jobs: list[tuple[str, Job]]) -> Written | None:
        """One group commit for every conversation with queued writes: authorized, stored,
        its totals queued; None if nothing of it was to be stored."""
        groups: dict[str, list[Job]] = {}
        for cid, job in jobs:
            groups.setdefault(cid, []).append(job)
        convs, bases, strict = await self._authorizing(jobs, groups)
        live, followers = admit(groups, convs)
        if not live:
            return None
        pending = {cid: [pending_of(j) for j in js] for cid, js in live.items()}
        results = await self._store.append_events(pending, strict=strict)
        if self.auth is not None:
            for cid, base in bases.items():
                res_list = results.get(cid, [])
                written = sum(1 for r in res_list if r.error is None and not r.duplicate)
                self.auth.commit(cid, convs.get(cid), base, written)
        stored_by: dict[str, list[Message]] = {}
        totals: dict[str, MessageTotals] = {}
        for cid, js in live.items():
            stored: list[Message] = []
            seqs: list[int] = []
            for item, res in zip(js, results[cid], strict=True):
                if res.duplicate or res.error is not None:
                    continue
                seqs.append(res.seq)
                if isinstance(item, SendJob) and item.stored is not None:
                    stored.append(item.stored)
            totals[cid] = totals_of(stored, seqs)
            stored_by[cid] = stored
        # The log entries (the messages themselves) are stored: durable from here on. The
        # totals go to the totals writer (coalesced, written in the background, retried).
        self.totals.add(totals)
        self.last_batch_at = time.monotonic()
        return Written(jobs, live, followers, results, convs, stored_by)

    async def _announce(self, w: Written) -> None:
        """A stored batch: its high-water marks, then its frames, then its callers' answers."""
        live, followers, results, convs = w.live, w.followers, w.results, w.convs
        if self._on_committed is not None:
            # The high-water marks (epochs.py) go out before the frames that reach them.
            for cid, res_list in results.items():
                fresh = [r for r in res_list if not r.duplicate and r.error is None]
                if fresh:
                    last = max(fresh, key=lambda r: r.seq)
                    await self._on_committed(cid, int(last.frame.get("epoch") or 0), last.seq)
        for cid, res_list in results.items():
            subject = subjects.conversation_events(cid)
            for res in res_list:
                # A duplicate is published again: its first run (a replica that died before
                # publishing it) may never have; gateways drop a seq they delivered already.
                if res.error is None:
                    await self._publish_durable(cid, subject, res.frame)
        if self._on_stored is not None:
            for cid, stored in w.stored_by.items():
                if stored and cid in convs:
                    self._after_stored(convs[cid], stored)
        again: list[tuple[str, Job]] = []
        for cid, js in live.items():
            for item, res in zip(js, results[cid], strict=True):
                if isinstance(item, SendJob):
                    cmid = item.message.client_message_id
                    more = followers.get((cid, cmid), []) if cmid else []
                    if res.error is STALE:  # authorized from a stale cache: read, try again
                        again.extend((cid, j) for j in [item, *more])
                        continue
                    if res.error is not None:  # the store refused this one: only it fails
                        fail([item, *more], res.error)
                        continue
                    result = SendResult(res.frame["data"], res.seq, duplicate=res.duplicate)
                    resolve_by_author([item, *more], result)
                elif res.error is not None:
                    fail([item], res.error)
                elif not item.future.done():
                    item.future.set_result(res)
        if again:  # first in the next batch, in their order
            self._queue[:0] = again
            self._queued_at[:0] = [time.monotonic()] * len(again)

    async def _authorizing(
        self, jobs: list[tuple[str, Job]], groups: dict[str, list[Job]]
    ) -> tuple[dict[str, Conversation], dict[str, int | None], set[str]]:
        """The conversations that authorize this batch: from the owner's cache where valid,
        else one read for the rest. Also, per conversation, the log's next seq the
        conversation is valid from (AuthCache.commit), and the conversations taken from the
        cache (written ``strict``)."""
        auth = self.auth
        convs: dict[str, Conversation] = {}
        bases: dict[str, int | None] = {}
        if auth is not None:
            # Its own change of a conversation (update, delete, create) is written by this
            # replica: the entry goes before the batch that stores the change's event.
            changed = {cid for cid, job in jobs if isinstance(job, EventJob)}
            for cid in groups:
                if cid in changed:
                    auth.drop(cid)
                elif (hit := auth.lookup(cid)) is not None:
                    convs[cid], bases[cid] = hit
                else:
                    bases[cid] = auth.base(cid)  # before the read
        strict = set(convs)
        missing = [cid for cid in groups if cid not in convs]
        if missing:
            convs.update(await self._store.get_conversations(missing, with_totals=False))
        return convs, bases, strict

    async def _publish_durable(self, cid: str, subject: str, frame: dict[str, Any]) -> None:
        payload = jsonutil.dumps(frame)
        if self._publish_frame is None:
            await self._publish(subject, payload)
            return
        epoch = frame.get("epoch")
        headers = subjects.durable_headers(
            cid, int(frame["seq"]), epoch if isinstance(epoch, int) else 0, str(frame["event"])
        )
        await self._publish_frame(subject, payload, headers)

    def _after_stored(self, conv: Conversation, stored: list[Message]) -> None:
        assert self._on_stored is not None
        try:
            more = self._on_stored(conv, stored)
        except Exception:  # stored already: the writers get their answer all the same
            logger.exception("after-store hook failed")
            return
        if more is not None:
            self._in_background(more)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """After-store work (agent turns) that must not hold up the next batch."""

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("after-store hook failed")

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
