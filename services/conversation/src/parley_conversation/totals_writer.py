"""The conversation totals (totalMessages, lastMessage, lastSeq...) behind the log.

The sequencer stores a batch's messages in the log and replies; their totals come here and
are written in the background (one bulk update at a time, the batches stored meanwhile
merged into it), retried, never failing a caller whose message is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from pymongo.errors import PyMongoError

from parley_conversation.domain.delivered import Mark
from parley_conversation.entries import MessageTotals
from parley_conversation.repository import Repository

logger = logging.getLogger(__name__)

PROJECTION_ATTEMPTS = 5
PROJECTION_FIRST_DELAY = 0.05  # seconds, x4 per attempt, capped
PROJECTION_MAX_DELAY = 2.0
# While busy, the totals writer pauses at least this many times as long as its last write
# took, so totals take at most 1/(1+9) = 10 % of the store's time whatever the number of
# conversations (each totals update is a document write: 0.3-0.45 ms of the embedded
# store's CPU in one transaction; 100 busy conversations every 0.25 s were 40 % of it, and
# with 4 here, 17-20 % of its samples at 1,000 sends/s, slowing the log inserts as much).
# Capped: totals trail by at most TOTALS_MAX_PAUSE plus one write.
TOTALS_PAUSE_PER_WRITE = 9.0
TOTALS_MAX_PAUSE = 2.0  # seconds


class TotalsWriter:
    def __init__(
        self,
        store: Repository,
        *,
        interval: float = 0.0,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self.on_failure = on_failure  # a totals write given up (metrics)
        # Totals not written yet, merged per conversation (see add).
        self._pending: dict[str, MessageTotals] = {}
        # Callers of write_marks waiting for the write that holds their marks (pending).
        self._waiters: list[asyncio.Future[bool]] = []
        self._writer: asyncio.Task[None] | None = None
        self._added = 0  # batches of totals queued so far
        self._written = 0  # ... of which written (or given up, see _project)
        self._round = asyncio.Event()  # set (and replaced) after each write
        self._interval = interval  # least pause between two totals writes
        self._flush = asyncio.Event()  # cuts that pause short (a read, a drain)
        self._closing = False

    @property
    def running(self) -> bool:
        return self._writer is not None

    def closing(self) -> None:
        """Shutting down: no more pauses between writes."""
        self._closing = True
        self._flush.set()

    async def drain(self) -> None:
        """Wait for the write in flight and the ones queued behind it."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    async def settle(self) -> None:
        """Wait until the totals queued so far are written (not the ones queued after this
        call: it ends even under a steady load)."""
        target = self._added
        while self._written < target and self._writer is not None:
            self._flush.set()
            await self._round.wait()

    def add(self, totals: dict[str, MessageTotals]) -> None:
        """Queue a batch's totals, merged per conversation.

        The writer has at most one bulk update in flight; the totals of the batches stored
        meanwhile merge into one ``$inc``/``$max`` per conversation and go out next. So the
        store does one totals update per conversation per write (not per batch) when it is
        the bottleneck, and none of it holds up the next batch's inserts or the replies.
        When totals are still pending after a write, the writer pauses ``totals_interval``
        seconds, or longer after a slow write (``TOTALS_PAUSE_PER_WRITE``), cut short by
        ``settle`` or a drain, so more batches merge: when busy, each conversation's
        totals are updated at most once per pause. The totals are exact once the writer is
        idle (``settle``).
        """
        for cid, t in totals.items():
            old = self._pending.get(cid)
            self._pending[cid] = t if old is None else merge_totals(old, t)
        self._added += 1
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="totals")

    async def write_marks(self, marks: Mapping[str, Mark]) -> bool:
        """Store these delivery watermarks (receipts, once per window) with the totals: in
        the next write, one update per conversation with its totals if it has some (the
        pause between writes is kept: when busy, marks add no write of their own). True
        once they are written, False if that write was given up."""
        if not marks:
            return True
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self.add({cid: MessageTotals(delivered=m) for cid, m in marks.items()})
        return await asyncio.shield(done)

    async def _write(self) -> None:
        try:
            while self._pending:
                self._flush.clear()
                batch, self._pending = self._pending, {}
                waiters, self._waiters = self._waiters, []
                upto = self._added
                started = time.monotonic()
                written = False
                try:
                    written = await self._project(batch)
                finally:
                    for w in waiters:
                        if not w.done():
                            w.set_result(written)
                took = time.monotonic() - started
                self._written = upto
                self._round.set()
                self._round = asyncio.Event()
                if self._pending and self._interval > 0 and not self._closing:
                    # Busy: let more batches merge (one update per conversation per pause).
                    pause = min(
                        TOTALS_MAX_PAUSE,
                        max(self._interval, TOTALS_PAUSE_PER_WRITE * took),
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._flush.wait(), pause)
        finally:
            self._writer = None
            self._round.set()
            self._round = asyncio.Event()

    async def _project(self, batch: dict[str, MessageTotals]) -> bool:
        """The totals write after the log insert: retried, never fails a caller.

        Failing the callers here would be wrong: their messages are stored. If the store
        stays down, the projection is left behind (logged, counted).
        """
        delay = PROJECTION_FIRST_DELAY
        for attempt in range(1, PROJECTION_ATTEMPTS + 1):
            try:
                await self._store.add_totals(batch)
                return True
            except PyMongoError:
                if attempt == PROJECTION_ATTEMPTS:
                    logger.exception("projection totals lost after %d attempts", attempt)
                    if self.on_failure is not None:
                        self.on_failure()
                    return False
                logger.warning("projection totals failed (attempt %d), retrying", attempt)
                await asyncio.sleep(delay)
                delay = min(delay * 4, PROJECTION_MAX_DELAY)
        return False


def merge_totals(a: MessageTotals, b: MessageTotals) -> MessageTotals:
    """The totals of ``a`` then ``b`` (sums; the last message and seq of the higher seq)."""
    last = a.last_message
    if b.last_message is not None and (last is None or (b.last_message.seq or 0) > (last.seq or 0)):
        last = b.last_message
    delivered = a.delivered
    if b.delivered is not None:
        delivered = b.delivered if delivered is None else delivered.joined(b.delivered)
    return MessageTotals(
        messages=a.messages + b.messages,
        tokens=a.tokens + b.tokens,
        cost=a.cost + b.cost,
        last_message=last,
        max_seq=max(a.max_seq, b.max_seq),
        delivered=delivered,
    )
