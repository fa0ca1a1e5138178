"""Group commit of durable writes, per conversation, per replica.

Every durable event of a conversation (a new message or any other durable frame) is queued
here. One worker task per conversation with pending work takes everything queued (up to
``max_batch``), authorizes the sends with one read of the conversation, drops retried
``clientMessageId``s, claims consecutive seqs by inserting the frames into the event log in one
``insert_many`` (see :mod:`parley_conversation.store`), inserts the messages in one
``insert_many``, moves the totals with one atomic update, publishes the frames in seq order
and only then resolves the callers. While a batch is being written the next one
accumulates, so the batch size grows with the load (no fixed timer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.errors import PyMongoError

from parley_contract import jsonutil, subjects
from parley_contract.errors import ErrorCode, ParleyError, forbidden
from parley_contract.events import Event
from parley_contract.internal import Principal
from parley_contract.jsonutil import model_json
from parley_contract.models import Conversation, ConversationStatus, Message
from parley_conversation import domain
from parley_conversation.store import AppendResult, MessageTotals, PendingEvent, Repository

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
OnStored = Callable[[Conversation, list[Message]], Awaitable[None]]


@dataclass
class SendResult:
    message: dict[str, Any]  # the stored message, wire JSON
    seq: int
    duplicate: bool = False


@dataclass(eq=False)
class _Send:
    principal: Principal
    message: Message
    future: asyncio.Future[SendResult]
    stored: Message | None = None


@dataclass(eq=False)
class _Event:
    event: Event
    build: Callable[[int], Any]
    future: asyncio.Future[AppendResult]


_Job = _Send | _Event


class Sequencer:
    def __init__(
        self,
        store: Repository,
        publish: Publish,
        on_stored: OnStored | None = None,
        *,
        max_batch: int = 500,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._publish = publish
        self._on_stored = on_stored
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queues: dict[str, list[_Job]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    @property
    def in_flight(self) -> int:
        return sum(len(q) for q in self._queues.values()) + len(self._workers)

    def _submit(self, conversation_id: str, job: _Job) -> None:
        if self._closing:
            raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "this replica is shutting down, retry")
        self._queues.setdefault(conversation_id, []).append(job)
        if conversation_id not in self._workers:
            self._workers[conversation_id] = asyncio.create_task(
                self._work(conversation_id), name=f"sequencer:{conversation_id}"
            )

    async def send(self, principal: Principal, message: Message) -> SendResult:
        """Authorize, store and publish a message; returns it as stored (with seq)."""
        fut: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self._submit(message.conversation_id, _Send(principal, message, fut))
        return await fut

    async def append(
        self, conversation_id: str, event: Event, build: Callable[[int], Any]
    ) -> AppendResult:
        """Store and publish one durable frame (``build(seq)`` gives its data)."""
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._submit(conversation_id, _Event(event, build, fut))
        return await fut

    async def drain(self) -> None:
        """Refuse new work and wait for every queued batch to be written and answered."""
        self._closing = True
        while self._workers:
            await asyncio.gather(*list(self._workers.values()), return_exceptions=True)

    async def _work(self, conversation_id: str) -> None:
        jobs: list[_Job] = []
        try:
            while True:
                queue = self._queues.get(conversation_id)
                if not queue:
                    break
                jobs = queue[: self._max_batch]
                del queue[: self._max_batch]
                if self._on_batch is not None:
                    self._on_batch(len(jobs))
                try:
                    await self._process(conversation_id, jobs)
                except ParleyError as exc:
                    _fail(jobs, exc)
                except PyMongoError:
                    logger.exception("store error while writing %s", conversation_id)
                    _fail(
                        jobs,
                        ParleyError(
                            ErrorCode.SERVICE_UNAVAILABLE, "the store is unavailable, retry"
                        ),
                    )
                except Exception:
                    logger.exception("unexpected error while writing %s", conversation_id)
                    _fail(jobs, ParleyError(ErrorCode.INTERNAL_ERROR, "internal error"))
                jobs = []
        finally:
            # Only non-empty if this task was cancelled: nobody may wait forever.
            self._workers.pop(conversation_id, None)
            rest = jobs + self._queues.pop(conversation_id, [])
            _fail(rest, ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "write interrupted, retry"))

    async def _process(self, cid: str, jobs: list[_Job]) -> None:
        conv: Conversation | None = None
        sends = [j for j in jobs if isinstance(j, _Send)]
        live: list[_Job] = [j for j in jobs if isinstance(j, _Event)]
        followers: dict[str, list[_Send]] = {}
        if sends:
            conv = await self._store.get_conversation(cid)
            accepted: list[_Send] = []
            for job in sends:
                if conv is None or not domain.can_access(conv, job.principal):
                    _fail([job], forbidden())
                elif conv.status is ConversationStatus.CLOSED:
                    _fail([job], ParleyError(ErrorCode.CONFLICT, "the conversation is closed"))
                else:
                    accepted.append(job)
            # Retries of one clientMessageId inside the batch wait for the first one.
            primaries: list[_Send] = []
            for job in accepted:
                cmid = job.message.client_message_id
                if cmid is not None and cmid in followers:
                    followers[cmid].append(job)
                    continue
                if cmid is not None:
                    followers[cmid] = []
                primaries.append(job)
            known = await self._store.frames_by_client_ids(cid, list(followers))
            for job in primaries:
                cmid = job.message.client_message_id
                if cmid is not None and cmid in known:
                    frame = known[cmid]
                    result = SendResult(frame["data"], int(frame["seq"]), duplicate=True)
                    _resolve([job, *followers.pop(cmid)], result)
                else:
                    live.append(job)
            order = {id(j): k for k, j in enumerate(jobs)}
            live.sort(key=lambda j: order[id(j)])
        if not live:
            return
        pending = [self._pending(j) for j in live]
        hint = conv.last_seq + 1 if conv is not None and conv.last_seq else None
        results = await self._store.append_events(cid, pending, hint=hint)
        stored: list[Message] = []
        seqs: list[int] = []
        for item, res in zip(live, results, strict=True):
            if res.duplicate:
                continue
            seqs.append(res.seq)
            if isinstance(item, _Send) and item.stored is not None:
                if item.stored.seq != res.seq:  # built for a seq that was then taken
                    item.stored = item.stored.model_copy(update={"seq": res.seq})
                stored.append(item.stored)
        await self._store.insert_messages(stored)
        t = domain.totals_of(stored, seqs)
        await self._store.add_totals(
            cid,
            MessageTotals(
                messages=t.messages,
                tokens=t.tokens,
                cost=t.cost,
                last_message=domain.last_message_of(t.last) if t.last else None,
                max_seq=t.max_seq,
            ),
        )
        subject = subjects.conversation_events(cid)
        for res in results:
            if not res.duplicate:
                await self._publish(subject, jsonutil.dumps(res.frame))
        if self._on_stored is not None and conv is not None and stored:
            try:
                await self._on_stored(conv, stored)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("after-store hook failed for %s", cid)
        for item, res in zip(live, results, strict=True):
            if isinstance(item, _Send):
                result = SendResult(res.frame["data"], res.seq, duplicate=res.duplicate)
                cmid = item.message.client_message_id
                _resolve([item, *(followers.get(cmid, []) if cmid else [])], result)
            elif not item.future.done():
                item.future.set_result(res)

    @staticmethod
    def _pending(job: _Job) -> PendingEvent:
        if isinstance(job, _Event):
            return PendingEvent(job.event, job.build)

        def build(seq: int, job: _Send = job) -> Any:
            job.stored = job.message.model_copy(update={"seq": seq})
            return model_json(job.stored)

        return PendingEvent(Event.MESSAGE_NEW, build, job.message.client_message_id)


def _resolve(jobs: list[_Send], result: SendResult) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_result(result)


def _fail(jobs: Sequence[_Job], exc: ParleyError) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
