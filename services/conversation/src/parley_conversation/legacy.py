"""Folds the event log of before 2026-11-26 into the conversation log, once, at startup.

Until then every durable frame was inserted into an ``events`` collection and each message
once more into ``messages`` (two inserts per message, and a crash window between them that a
periodic repair pass closed). Now the ``messages`` collection is the log (see
:mod:`parley_conversation.store`). A database written by an older version still has its
``events``: this moves them over (the non-message events, and any message the old crash
window left only there, with its totals) and drops the collection. Idempotent; several
replicas may run it at once.
"""

from __future__ import annotations

import logging

from parley_contract.models import Message
from parley_conversation.sequencer import totals_of
from parley_conversation.store import MessageTotals, Repository

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


async def fold_legacy_event_log(store: Repository) -> list[Message]:
    """Fold the old ``events`` collection in; returns the messages it had to add."""
    added = await store.fold_legacy_events()
    if added:
        await store.add_totals(totals_of_messages(added))
        logger.warning(
            "legacy event log: %d messages were only in the old event log, now stored",
            len(added),
        )
    return added
