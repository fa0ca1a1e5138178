"""The repair pass: re-applies ``message:new`` events whose message document is missing.

The crash window of the group commit (see the README): a replica that dies after the event
log insert and before the messages insert leaves events (no gap, replayable) without their
message documents and totals. This pass finds the ``message:new`` frames of a time window,
inserts the messages that are missing and adds their totals, counting only the messages
this pass inserted itself (two replicas repairing at once, or a late live insert, are told
apart by the messages' unique ``_id``), so it is idempotent.

Only frames older than ``grace`` seconds are looked at: a live batch inserts its messages
milliseconds after its events (its retries give up after ~3 s), so a younger frame without
its message is most likely still being written by a healthy replica.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pydantic import ValidationError

from parley_contract.models import Message
from parley_contract.timeutil import iso
from parley_conversation import domain
from parley_conversation.store import MessageTotals, Repository

logger = logging.getLogger(__name__)

REPAIR_GRACE_SECONDS = 30.0
REPAIR_LIMIT = 20_000  # frames looked at per pass


async def repair_once(
    store: Repository,
    now: datetime,
    *,
    window: float,
    grace: float = REPAIR_GRACE_SECONDS,
    limit: int = REPAIR_LIMIT,
) -> list[Message]:
    """One pass over the frames of [now - window, now - grace); returns the messages it
    inserted (their totals are added too)."""
    start = iso(now - timedelta(seconds=window))
    end = iso(now - timedelta(seconds=grace))
    frames = await store.message_frames_between(start, end, limit)
    messages: list[Message] = []
    for frame in frames:
        try:
            messages.append(Message.model_validate(frame.get("data")))
        except ValidationError:
            logger.error("repair: unreadable message:new frame at seq %s", frame.get("seq"))
    inserted = await store.insert_missing_messages(messages)
    if not inserted:
        return []
    by_conv: dict[str, list[Message]] = {}
    for m in inserted:
        by_conv.setdefault(m.conversation_id, []).append(m)
    totals: dict[str, MessageTotals] = {}
    for cid, msgs in by_conv.items():
        t = domain.totals_of(msgs, [m.seq for m in msgs if m.seq is not None])
        totals[cid] = MessageTotals(
            messages=t.messages,
            tokens=t.tokens,
            cost=t.cost,
            last_message=domain.last_message_of(t.last) if t.last else None,
            max_seq=t.max_seq,
        )
    await store.add_totals(totals)
    logger.warning(
        "repair: re-applied %d message:new events missing their message (%d conversations)",
        len(inserted),
        len(totals),
    )
    return inserted
