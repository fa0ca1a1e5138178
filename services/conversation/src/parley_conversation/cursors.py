"""Read cursors and the display-name directory in MongoDB (issue 17).

One document per participant of a conversation (``_id`` = ``<conversationId>:<kind>:<id>``)
with ``readSeq``, how far the principal has read; it only moves forward. Nothing is written
per message per recipient: unread counts are counted from the log (``messages`` by
``(conversationId, seq)``, capped); delivery is parley_conversation.delivery.

The directory ``principals`` (``_id`` = ``<kind>:<id>``) keeps the last ``name`` claim each
principal's token carried, so participants who are not online still show their names.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import MessageType, Role
from parley_conversation.entries import LOG_EVENT

logger = logging.getLogger(__name__)

# Unread counts stop at this many (a client shows "99+"), and look at most at SCAN_CAP log
# entries past the cursor: a principal who never opened a long conversation must not cost a
# full scan.
UNREAD_CAP: Final = 100
SCAN_CAP: Final = 500
# Message types a person reads (an agent turn's thinking and tool messages are not unread).
COUNTED_TYPES: Final = frozenset(
    {MessageType.TEXT.value, MessageType.ERROR.value, MessageType.SYSTEM.value}
)
# What a count reads of each log entry. Only (conversationId, seq) is in the query: on the
# embedded store any other condition in it (an $or on the author, isActive) made a count of
# 50 entries cost 40-200 ms instead of 3 ms (bench/experiments/unread_embedded.py).
_COUNT_FIELDS: Final = {"createdBy": 1, "role": 1, "messageType": 1, "isActive": 1, "event": 1}
# Most cursors conversation:joined carries (a large conversation's others are left out).
MAX_CURSORS: Final = 200
IN_CHUNK: Final = 50
NAME_CACHE: Final = 10_000


def cursor_id(conversation_id: str, kind: PrincipalKind | str, principal_id: str) -> str:
    return f"{conversation_id}:{PrincipalKind(kind).value}:{principal_id}"


def principal_key(kind: PrincipalKind | str, principal_id: str) -> str:
    return f"{PrincipalKind(kind).value}:{principal_id}"


def _roles_of(kind: PrincipalKind) -> frozenset[str]:
    """The roles of the messages a principal of this kind writes (domain.access.is_author)."""
    if kind is PrincipalKind.USER:
        return frozenset({Role.USER.value})
    if kind is PrincipalKind.AGENT:
        return frozenset({Role.ASSISTANT.value, Role.TOOL.value})
    return frozenset({Role.SYSTEM.value})


def counts_as_unread(doc: dict[str, Any], kind: PrincipalKind, principal_id: str) -> bool:
    """A log entry the principal has to read: a message (not another durable event) of a
    type people read, not deleted, that someone else wrote."""
    if LOG_EVENT in doc or "role" not in doc:
        return False
    if doc.get("messageType", MessageType.TEXT.value) not in COUNTED_TYPES:
        return False
    if doc.get("isActive", True) is False:
        return False
    return not (doc.get("createdBy") == principal_id and doc.get("role") in _roles_of(kind))


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

    async def read_to(self, cid: str, kind: PrincipalKind, pid: str, seq: int) -> int | None:
        """Move the read cursor forward to ``seq``: its previous value, or None if it was
        there already (or past it)."""
        field = "readSeq"
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
        """The conversation's read cursors as the wire carries them (``principalId, kind,
        readSeq``), at most ``limit``."""
        docs = await self.cursors.find({"conversationId": cid}).limit(limit).to_list()
        return [_wire(d) for d in docs]

    async def cursors_of_many(
        self, cids: Sequence[str], limit: int = MAX_CURSORS
    ) -> dict[str, list[dict[str, Any]]]:
        """:meth:`cursors_of` of each conversation, one ``$in`` read per ``IN_CHUNK`` of
        them (a batched rejoin of many conversations). A conversation with ``limit`` or more
        cursors is read on its own, as :meth:`cursors_of` reads it; a chunk's read is capped
        (one conversation's many cursors never load the whole collection)."""
        ids = list(dict.fromkeys(cids))
        out: dict[str, list[dict[str, Any]]] = {c: [] for c in ids}
        chunks = [ids[i : i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]
        found = await asyncio.gather(
            *(
                self.cursors.find({"conversationId": {"$in": c}}).limit(limit * len(c)).to_list()
                for c in chunks
            )
        )
        alone: set[str] = set()
        for chunk, docs in zip(chunks, found, strict=True):
            if len(docs) >= limit * len(chunk):  # capped: any of them may be cut short
                alone.update(chunk)
                continue
            for d in docs:
                out[str(d.get("conversationId"))].append(_wire(d))
        alone.update(c for c, docs in out.items() if len(docs) >= limit)
        for c in alone:
            out[c] = await self.cursors_of(c, limit)
        return out

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
        found = (
            self.messages.find({"conversationId": cid, "seq": {"$gt": after_seq}}, _COUNT_FIELDS)
            .sort("seq", ASCENDING)
            .limit(SCAN_CAP)
        )
        n = 0
        async for doc in found:
            if counts_as_unread(doc, kind, pid):
                n += 1
                if n >= UNREAD_CAP:
                    break
        return n

    async def scan(self, cid: str, read_seqs: Mapping[Principal, int]) -> LogScan:
        """One read of the log from the lowest read seq of ``read_seqs`` (principal → its
        read seq; services count nothing and are left out), for :meth:`LogScan.unread` and
        :attr:`LogScan.last` (a batched rejoin: parley_conversation.rejoin)."""
        counted = {p: s for p, s in read_seqs.items() if p.kind is not PrincipalKind.SERVICE}
        if not counted:
            return LogScan(self, cid, -1, [], complete=False)
        low = min(counted.values())
        docs = (
            await self.messages.find(
                {"conversationId": cid, "seq": {"$gt": low}}, {**_COUNT_FIELDS, "seq": 1}
            )
            .sort("seq", ASCENDING)
            .limit(SCAN_CAP)
            .to_list()
        )
        return LogScan(self, cid, low, docs, complete=len(docs) < SCAN_CAP)

    async def unread_many(
        self, cid: str, read_seqs: Mapping[Principal, int]
    ) -> dict[Principal, int]:
        """Each principal's :meth:`unread` (``read_seqs``: principal → its read seq), from
        one scan of the log when that covers every principal's window; a principal whose
        window reaches past it is counted alone. Services count nothing (0), as
        conversation:join."""
        return await (await self.scan(cid, read_seqs)).unread(read_seqs)

    # ------------------------------------------------------------ names

    async def remember(self, kind: PrincipalKind, pid: str, name: str | None) -> bool:
        """Store the display name a token carried (once per change, per replica); True when
        it was stored now (a new name), False when it was already."""
        if not name or kind is PrincipalKind.SERVICE:
            return False
        key = principal_key(kind, pid)
        if self._names.get(key) == name:
            self._names.move_to_end(key)
            return False
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
        return True

    async def names(self, keys: Sequence[str]) -> dict[str, str]:
        """``<kind>:<id>`` → name, for the keys the directory knows."""
        ids = list(dict.fromkeys(keys))
        chunks = [ids[i : i + IN_CHUNK] for i in range(0, len(ids), IN_CHUNK)]
        found = await asyncio.gather(
            *(self.principals.find({"_id": {"$in": c}}, {"name": 1}).to_list() for c in chunks)
        )
        return {d["_id"]: str(d["name"]) for docs in found for d in docs if d.get("name")}


def _wire(cursor: dict[str, Any]) -> dict[str, Any]:
    """A read cursor as the wire carries it."""
    return {
        "principalId": cursor.get("principalId"),
        "kind": cursor.get("kind"),
        "readSeq": int(cursor.get("readSeq", 0)),
    }


class LogScan:
    """The log of one conversation after ``low`` (at most ``SCAN_CAP`` entries, in seq
    order; ``complete``: it reached the end of the log)."""

    def __init__(
        self,
        store: CursorStore,
        cid: str,
        low: int,
        docs: list[dict[str, Any]],
        *,
        complete: bool,
    ) -> None:
        self._store, self._cid, self._low, self._docs = store, cid, low, docs
        self._complete = complete

    @property
    def last(self) -> int | None:
        """The log's highest seq, when this scan knows it (None: read it)."""
        if not self._complete:
            return None
        if self._docs:
            return int(self._docs[-1].get("seq", 0))
        return 0 if self._low == 0 else None  # nothing after low: the end is at or below it

    async def unread(self, read_seqs: Mapping[Principal, int]) -> dict[Principal, int]:
        """Each principal's unread count, as :meth:`CursorStore.unread` would count it."""
        out = dict.fromkeys(read_seqs, 0)
        for p, after in read_seqs.items():
            if p.kind is PrincipalKind.SERVICE:
                continue
            if after < self._low or (not self._complete and after != self._low):
                out[p] = await self._store.unread(self._cid, p.kind, p.id, after)
                continue
            n = 0
            for doc in self._docs:
                if int(doc.get("seq", 0)) > after and counts_as_unread(doc, p.kind, p.id):
                    n += 1
                    if n >= UNREAD_CAP:
                        break
            out[p] = n
        return out
