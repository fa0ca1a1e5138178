"""Folds the event log of before 2026-11-26 into the conversation log, once, at startup.

Until then every durable frame was inserted into an ``events`` collection and each message
once more into ``messages`` (two inserts per message, and a crash window between them that a
periodic repair pass closed). Now the ``messages`` collection is the log (see
:mod:`parley_conversation.log`). A database written by an older version still has its
``events``: this moves them over (the non-message events, and any message the old crash
window left only there, with its totals) and drops the collection. Idempotent; several
replicas may run it at once. Off the hot path: nothing here runs after startup.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from parley_contract.events import Event
from parley_contract.models import Message
from parley_conversation.documents import message_doc
from parley_conversation.entries import DUPLICATE_KEY, LOG_EVENT, MessageTotals, totals_of
from parley_conversation.store import MongoStore

logger = logging.getLogger(__name__)


def totals_of_messages(messages: list[Message]) -> dict[str, MessageTotals]:
    """The totals the given stored messages add, per conversation."""
    by_conv: dict[str, list[Message]] = {}
    for m in messages:
        by_conv.setdefault(m.conversation_id, []).append(m)
    return {
        cid: totals_of(msgs, [m.seq for m in msgs if m.seq is not None])
        for cid, msgs in by_conv.items()
    }


async def fold_legacy_event_log(store: MongoStore) -> list[Message]:
    """Fold the old ``events`` collection in; returns the messages it had to add."""
    added = await fold_legacy_events(store.legacy_events, store.messages)
    if added:
        await store.add_totals(totals_of_messages(added))
        logger.warning(
            "legacy event log: %d messages were only in the old event log, now stored",
            len(added),
        )
    return added


async def fold_legacy_events(
    legacy_events: AsyncCollection[dict[str, Any]],
    log: AsyncCollection[dict[str, Any]],
    chunk: int = 500,
) -> list[Message]:
    """Move the event log of before 2026-11-26 (collection ``events``: every durable
    frame, the messages also written to ``messages``) into the conversation log, then
    drop it. Returns the messages that were only in the old log (a replica died between
    its two inserts): their totals are still to be added.

    Idempotent, and safe with several replicas starting at once: an entry already in the
    log (same ``_id``, or same seq) is skipped, and a message counts as inserted only for
    the replica whose insert stored it.
    """
    inserted: list[Message] = []
    batch: list[dict[str, Any]] = []

    async def flush() -> None:
        entries: list[dict[str, Any]] = []
        messages: list[Message | None] = []
        for d in batch:
            frame = d.get("frame") or {}
            if d.get(LOG_EVENT) == Event.MESSAGE_NEW.value:
                try:
                    m = Message.model_validate(frame.get("data"))
                except ValidationError:
                    logger.error("legacy event log: unreadable message:new %s", d.get("_id"))
                    continue
                entries.append(message_doc(m))
                messages.append(m)
            else:
                entries.append(
                    {
                        "_id": d["_id"],
                        "conversationId": d["conversationId"],
                        "seq": d["seq"],
                        LOG_EVENT: d[LOG_EVENT],
                        "frame": frame,
                    }
                )
                messages.append(None)
        batch.clear()
        if not entries:
            return
        taken: set[int] = set()
        try:
            await log.insert_many(entries, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            taken = {int(e["index"]) for e in errors}
        inserted.extend(m for i, m in enumerate(messages) if m is not None and i not in taken)

    async for doc in legacy_events.find({}):
        batch.append(doc)
        if len(batch) >= chunk:
            await flush()
    await flush()
    await legacy_events.drop()
    return inserted
