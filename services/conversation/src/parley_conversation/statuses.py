"""``messageStatus`` as read: the stored status, or ``delivered`` where the conversation's
delivery watermark covers the message (domain/delivered.py, protocol 3.6).

Every read that returns stored messages goes through here: history pages, single messages
(and the edit, delete and reaction events built from them), the log's frames (``message:new``
replayed on resume and gap fill, a keyed command's repeat). One ``_id`` read of the
conversations' totals documents per call, only when a message still says ``sent``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Final

from pymongo.asynchronous.collection import AsyncCollection

from parley_contract.events import Event
from parley_contract.models import Message, MessageStatus
from parley_conversation.domain.delivered import (
    DELIVERED,
    FIELDS,
    SENT,
    Mark,
    derive,
    mark_of,
    status,
)

IN_CHUNK: Final = 50


async def marks_of(totals: AsyncCollection[dict[str, Any]], cids: Iterable[str]) -> dict[str, Mark]:
    """The stored delivery marks of these conversations (an empty mark when none)."""
    ids = list(dict.fromkeys(cids))
    if not ids:
        return {}
    if len(ids) == 1:
        return {ids[0]: mark_of(await totals.find_one({"_id": ids[0]}, FIELDS))}
    chunks = [ids[i : i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]
    found = await asyncio.gather(
        *(totals.find({"_id": {"$in": c}}, FIELDS).to_list() for c in chunks)
    )
    docs = {d["_id"]: d for ds in found for d in ds}
    return {cid: mark_of(docs.get(cid)) for cid in ids}


async def messages(
    totals: AsyncCollection[dict[str, Any]], items: Sequence[Message]
) -> list[Message]:
    """``items`` with their status as read."""
    cids = [m.conversation_id for m in items if m.message_status is MessageStatus.SENT]
    if not cids:
        return list(items)
    marks = await marks_of(totals, cids)

    def read(m: Message) -> Message:
        if m.message_status is not MessageStatus.SENT:
            return m
        if status(SENT, m.seq, m.created_by, marks[m.conversation_id]) != DELIVERED:
            return m
        return m.model_copy(update={"message_status": MessageStatus.DELIVERED})

    return [read(m) for m in items]


async def frames(
    totals: AsyncCollection[dict[str, Any]], items: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Log frames with their ``message:new`` messages' status as read (other events carry
    the message as it was when they were sent, as before)."""

    def sent(f: dict[str, Any]) -> bool:
        data = f.get("data")
        return (
            f.get("event") == Event.MESSAGE_NEW.value
            and isinstance(data, dict)
            and data.get("messageStatus") == SENT
        )

    cids = [str(f.get("conversationId")) for f in items if sent(f)]
    if not cids:
        return list(items)
    marks = await marks_of(totals, cids)

    def read(f: dict[str, Any]) -> dict[str, Any]:
        if not sent(f):
            return f
        data = derive(f["data"], marks[str(f.get("conversationId"))])
        return f if data is f["data"] else {**f, "data": data}

    return [read(f) for f in items]
