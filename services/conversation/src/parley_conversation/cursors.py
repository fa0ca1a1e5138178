"""Read and delivery cursors, and the display-name directory, in MongoDB (issue 17).

One document per participant of a conversation (``_id`` = ``<conversationId>:<kind>:<id>``):
``readSeq`` (how far the principal has read) and ``deliveredSeq`` (how far its connections
have received the conversation's durable frames, as the gateways report). A cursor only moves
forward. Nothing is written per message per recipient: a message's ``messageStatus`` turns
``delivered`` with one ``update_many`` over the seq range a cursor advance covers, and unread
counts are counted from the log (``messages`` by ``(conversationId, seq)``, capped).

The directory ``principals`` (``_id`` = ``<kind>:<id>``) keeps the last ``name`` claim each
principal's token carried, so participants who are not online still show their names.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_contract.events import PrincipalKind
from parley_contract.models import MessageStatus, MessageType, Role

logger = logging.getLogger(__name__)

# Unread counts stop at this many (a client shows "99+"): a count scans the log past the
# cursor, and a principal who never opened a long conversation must not cost a full scan.
UNREAD_CAP: Final = 100
# Message types a person reads (an agent turn's thinking and tool messages are not unread).
COUNTED_TYPES: Final = [MessageType.TEXT.value, MessageType.ERROR.value, MessageType.SYSTEM.value]
# Most cursors conversation:joined carries (a large conversation's others are left out).
MAX_CURSORS: Final = 200
IN_CHUNK: Final = 50
NAME_CACHE: Final = 10_000

CursorField = Literal["readSeq", "deliveredSeq"]


def cursor_id(conversation_id: str, kind: PrincipalKind | str, principal_id: str) -> str:
    return f"{conversation_id}:{PrincipalKind(kind).value}:{principal_id}"


def principal_key(kind: PrincipalKind | str, principal_id: str) -> str:
    return f"{PrincipalKind(kind).value}:{principal_id}"


def _not_authored_by(kind: PrincipalKind, principal_id: str) -> dict[str, Any]:
    """A log filter for the messages ``(kind, id)`` did not write (domain.access.is_author:
    the same id and a role of that kind)."""
    if kind is PrincipalKind.USER:
        roles = [Role.USER.value]
    elif kind is PrincipalKind.AGENT:
        roles = [Role.ASSISTANT.value, Role.TOOL.value]
    else:
        roles = [Role.SYSTEM.value]
    return {"$or": [{"createdBy": {"$ne": principal_id}}, {"role": {"$nin": roles}}]}


class CursorStore:
    """Cursors and names, next to the conversation log (same database)."""

    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], messages: AsyncCollection[dict[str, Any]]
    ) -> None:
        self.cursors: AsyncCollection[dict[str, Any]] = db["cursors"]
        self.principals: AsyncCollection[dict[str, Any]] = db["principals"]
        self.messages = messages
        self._names: OrderedDict[str, str] = OrderedDict()  # names known to be stored

    async def init(self) -> None:
        await self.cursors.create_index([("conversationId", ASCENDING)])

    # ------------------------------------------------------------ cursors

    async def advance(
        self, field: CursorField, cid: str, kind: PrincipalKind, pid: str, seq: int
    ) -> int | None:
        """Move a cursor forward to ``seq``: its previous value, or None if it was there."""
        key = cursor_id(cid, kind, pid)
        try:
            before = await self.cursors.find_one_and_update(
                {"_id": key, "$or": [{field: {"$lt": seq}}, {field: {"$exists": False}}]},
                {
                    "$set": {field: seq, "updatedAt": datetime.now(UTC)},
                    "$setOnInsert": {
                        "conversationId": cid,
                        "kind": kind.value,
                        "principalId": pid,
                    },
                },
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
        except DuplicateKeyError:  # the document exists and is already at or past seq
            return None
        return int(before.get(field, 0)) if before else 0

    async def cursor(self, cid: str, kind: PrincipalKind, pid: str) -> dict[str, Any] | None:
        return await self.cursors.find_one({"_id": cursor_id(cid, kind, pid)})

    async def cursors_of(self, cid: str, limit: int = MAX_CURSORS) -> list[dict[str, Any]]:
        """The conversation's cursors as the wire carries them (``principalId, kind,
        readSeq, deliveredSeq``), at most ``limit``."""
        docs = await self.cursors.find({"conversationId": cid}).limit(limit).to_list()
        return [
            {
                "principalId": d.get("principalId"),
                "kind": d.get("kind"),
                "readSeq": int(d.get("readSeq", 0)),
                "deliveredSeq": int(d.get("deliveredSeq", 0)),
            }
            for d in docs
        ]

    async def read_seqs(self, kind: PrincipalKind, pid: str, cids: Sequence[str]) -> dict[str, int]:
        """The principal's readSeq in each conversation (0 when it never read)."""
        keys = {cursor_id(c, kind, pid): c for c in cids}
        ids = list(keys)
        chunks = [ids[i : i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]
        found = await asyncio.gather(
            *(self.cursors.find({"_id": {"$in": c}}, {"readSeq": 1}).to_list() for c in chunks)
        )
        out = dict.fromkeys(cids, 0)
        for docs in found:
            for d in docs:
                out[keys[d["_id"]]] = int(d.get("readSeq", 0))
        return out

    # ------------------------------------------------------------ the log

    async def unread(self, cid: str, kind: PrincipalKind, pid: str, after_seq: int) -> int:
        """Messages after ``after_seq`` that others wrote and a person reads, up to the cap."""
        query: dict[str, Any] = {
            "conversationId": cid,
            "seq": {"$gt": after_seq},
            "messageType": {"$in": COUNTED_TYPES},
            "isActive": True,
            **_not_authored_by(kind, pid),
        }
        return await self.messages.count_documents(query, limit=UNREAD_CAP)

    async def mark_delivered(
        self, cid: str, kind: PrincipalKind, pid: str, after_seq: int, upto_seq: int
    ) -> int:
        """``messageStatus`` sent → delivered for the messages in (after, upto] that
        ``(kind, pid)`` did not write: that principal's connections received them."""
        res = await self.messages.update_many(
            {
                "conversationId": cid,
                "seq": {"$gt": after_seq, "$lte": upto_seq},
                "messageStatus": MessageStatus.SENT.value,
                **_not_authored_by(kind, pid),
            },
            {"$set": {"messageStatus": MessageStatus.DELIVERED.value}},
        )
        return int(res.modified_count)

    # ------------------------------------------------------------ names

    async def remember(self, kind: PrincipalKind, pid: str, name: str | None) -> None:
        """Store the display name a token carried (once per change, per replica)."""
        if not name or kind is PrincipalKind.SERVICE:
            return
        key = principal_key(kind, pid)
        if self._names.get(key) == name:
            self._names.move_to_end(key)
            return
        await self.principals.update_one(
            {"_id": key},
            {
                "$set": {
                    "name": name,
                    "kind": kind.value,
                    "principalId": pid,
                    "updatedAt": datetime.now(UTC),
                }
            },
            upsert=True,
        )
        self._names[key] = name
        while len(self._names) > NAME_CACHE:
            self._names.popitem(last=False)

    async def names(self, keys: Sequence[str]) -> dict[str, str]:
        """``<kind>:<id>`` → name, for the keys the directory knows."""
        ids = list(dict.fromkeys(keys))
        chunks = [ids[i : i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]
        found = await asyncio.gather(
            *(self.principals.find({"_id": {"$in": c}}, {"name": 1}).to_list() for c in chunks)
        )
        return {d["_id"]: str(d["name"]) for docs in found for d in docs if d.get("name")}
