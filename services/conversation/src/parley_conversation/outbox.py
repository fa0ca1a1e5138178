"""No agent turn dropped (issue 19): each turn goes through an outbox in the store until
JetStream acknowledges it.

A user message to an agent is stored first (the sequencer's group commit); its agent turn
is then written to the collection ``agent_turn_outbox`` (``_id`` = the message id) and
published to the agent-turns stream with ``Nats-Msg-Id`` = the message id. Once JetStream
acknowledges the publish the outbox entry is deleted. A publish that fails (no JetStream
quorum, the stream's node down, NATS disconnected, a timeout) leaves the entry, and every
replica's sweep (``SWEEP_SECONDS``) publishes due entries again with capped backoff, also
the entries of a replica that died meanwhile; a sweep claims an entry by moving its
``due`` time forward first (``find_one_and_update``), so two replicas rarely publish the
same entry at once, and when they do, the stream's duplicate window (120 s) keeps one.

Left open: a replica killed between storing the message and writing its outbox entry (a
store round trip, a few ms) loses that turn; the message is stored and visible, unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from parley_contract import jsonutil, subjects
from parley_contract.internal import AgentTurn
from parley_runtime.tasks import every

logger = logging.getLogger(__name__)

COLLECTION = "agent_turn_outbox"
SWEEP_SECONDS = 1.0
PUBLISH_TIMEOUT_SECONDS = 2.0
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 10.0
SWEEP_BATCH = 200

_PUBLISH_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones (doubling, capped)."""
    return float(min(FIRST_RETRY_SECONDS * 2 ** max(attempts - 1, 0), MAX_RETRY_SECONDS))


class TurnOutbox:
    """The agent turns of one replica's messages, and the sweep over every replica's."""

    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        jetstream: Callable[[], Any],
        *,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self._coll = collection
        self._js = jetstream  # called per publish: the connection's current JetStream context
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None
        self._retrying: set[asyncio.Task[None]] = set()
        self.published = 0  # acknowledged publishes (tests, metrics)
        self.pending = 0  # entries left at the last sweep (metrics)

    async def start(self) -> None:
        with contextlib.suppress(PyMongoError):  # the sweep works without it, only slower
            await self._coll.create_index([("due", ASCENDING)])
        self._task = asyncio.create_task(
            every(
                SWEEP_SECONDS,
                self.sweep,
                what="agent turn outbox sweep",
                expected=(PyMongoError,),
                log=logger,
            ),
            name="turn-outbox",
        )

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._retrying) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    # ------------------------------------------------------------ one turn

    async def send(self, turn: AgentTurn) -> bool:
        """Record ``turn`` in the outbox, publish it; True once JetStream acknowledged it.

        False: it stays in the outbox and the sweep publishes it later (or, if even the
        outbox write failed, a task of this replica retries both).
        """
        payload = turn.model_dump(by_alias=True)
        written = await self._write(turn.message_id, payload)
        if await self._publish(turn.message_id, payload):
            if written:
                await self._delete(turn.message_id)
            return True
        if not written:
            task = asyncio.create_task(self._retry_in_memory(turn.message_id, payload))
            self._retrying.add(task)
            task.add_done_callback(self._retrying.discard)
        return False

    async def _write(self, message_id: str, payload: dict[str, Any]) -> bool:
        now = time.time()
        try:
            await self._coll.update_one(
                {"_id": message_id},
                {
                    "$setOnInsert": {
                        "turn": payload,
                        "createdAt": now,
                        "attempts": 0,
                        # Not before the first publish has had its chance (send's own).
                        "due": now + PUBLISH_TIMEOUT_SECONDS + retry_delay(1),
                    }
                },
                upsert=True,
            )
            return True
        except PyMongoError as exc:
            logger.warning("agent turn of %s not written to the outbox: %r", message_id, exc)
            return False

    async def _delete(self, message_id: str) -> None:
        try:
            await self._coll.delete_one({"_id": message_id})
        except PyMongoError as exc:
            # Published already: a later sweep publishes it again, the bridge's turn state
            # and the stream's duplicate window make that harmless.
            logger.warning("outbox entry of %s not deleted: %r", message_id, exc)

    async def _publish(self, message_id: str, payload: dict[str, Any]) -> bool:
        try:
            await self._js().publish(
                subjects.AGENT_TURN,
                jsonutil.dumps(payload),
                stream=subjects.STREAM_AGENT_TURNS,
                headers={"Nats-Msg-Id": message_id},
                timeout=PUBLISH_TIMEOUT_SECONDS,
            )
        except asyncio.CancelledError:
            raise
        except _PUBLISH_ERRORS as exc:
            if self._on_failure is not None:
                self._on_failure()
            logger.warning("agent turn of %s not acknowledged (%r): retried", message_id, exc)
            return False
        self.published += 1
        return True

    async def _retry_in_memory(self, message_id: str, payload: dict[str, Any]) -> None:
        attempts = 1
        while True:
            await asyncio.sleep(retry_delay(attempts))
            attempts += 1
            if await self._write(message_id, payload):
                return  # the sweep takes it from here
            if await self._publish(message_id, payload):
                return

    # ------------------------------------------------------------ the sweep

    async def sweep(self) -> int:
        """Publish the due entries (any replica's); the number acknowledged."""
        now = time.time()
        due = await self._coll.find({"due": {"$lte": now}}).limit(SWEEP_BATCH).to_list()
        done = 0
        for doc in due:
            attempts = int(doc.get("attempts") or 0) + 1
            claimed = await self._coll.find_one_and_update(
                {"_id": doc["_id"], "due": doc["due"]},
                {"$set": {"due": now + retry_delay(attempts)}, "$inc": {"attempts": 1}},
                return_document=ReturnDocument.AFTER,
            )
            if claimed is None:
                continue  # another replica took it
            if await self._publish(str(doc["_id"]), dict(doc.get("turn") or {})):
                await self._delete(str(doc["_id"]))
                done += 1
                logger.info("agent turn of %s published after %d attempts", doc["_id"], attempts)
            else:
                # Stop early: JetStream is still out, the rest would wait for timeouts too.
                break
        self.pending = await self._coll.count_documents({})
        return done
