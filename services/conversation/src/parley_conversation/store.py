"""The repository: conversations, their totals and tasks in MongoDB, on top of the log.

The collections are declared in :mod:`parley_conversation.documents`; the conversation log
(appending durable events with their seqs, reading them back) is
:class:`parley_conversation.log.ConversationLog`, which :class:`MongoStore` extends; the
fold of the pre-2026-11-26 event log is :mod:`parley_conversation.legacy` (startup only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from beanie import init_beanie
from pymongo import ASCENDING, DESCENDING, TEXT, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Conversation, ConversationStatus, Message
from parley_conversation import statuses
from parley_conversation.documents import (
    conversation_from,
    decode_cursor,
    documents_for,
    encode_cursor,
    merge_totals_doc,
    message_from,
    to_doc,
    wire,
)
from parley_conversation.entries import LOG_EVENT, MessageTotals
from parley_conversation.log import ConversationLog
from parley_conversation.pool_listener import ForgetSeqsOnPoolCleared
from parley_conversation.repository import Page
from parley_conversation.totals_store import TotalsStore

logger = logging.getLogger(__name__)

IN_CHUNK = 50  # keys per `$in` query (see get_conversations)
# PARLEY_CONVERSATION_WRITE_CONCERN -> the client's default write concern (every write of the
# service uses it): a write returns, and a reply can say success, only once it is this durable.
WRITE_CONCERNS: dict[str, dict[str, Any]] = {
    "journaled": {"w": 1, "journal": True},
    "majority": {"w": "majority", "journal": True},
    "acknowledged": {"w": 1, "journal": False},
}


# ---------------------------------------------------------------- MongoDB


class MongoStore(ConversationLog):
    """The repository on any MongoDB-wire server (SecantusDB embedded, or MongoDB)."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        timeout_ms: int = 5000,
        write_concern: str = "journaled",
        client_options: dict[str, Any] | None = None,  # TLS (parley_runtime.mongo)
    ) -> None:
        if write_concern not in WRITE_CONCERNS:
            raise ValueError(f"write concern: one of {', '.join(WRITE_CONCERNS)}")
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url,
            **WRITE_CONCERNS[write_concern],
            event_listeners=[ForgetSeqsOnPoolCleared(self)],
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            uuidRepresentation="standard",
            **(client_options or {}),
        )
        self._db = self._client[database]
        super().__init__(self._db["messages"])
        self.conversations: AsyncCollection[dict[str, Any]] = self._db["conversations"]
        # The event log before 2026-11-26 (frames of every durable event, messages written
        # twice); folded into `messages` at startup (parley_conversation.legacy).
        self.legacy_events: AsyncCollection[dict[str, Any]] = self._db["events"]
        self.totals_store = TotalsStore(self._client, self.totals)
        self.tasks: AsyncCollection[dict[str, Any]] = self._db["tasks"]
        self.search_mode: str = "regex"  # "text" once init() found text indexes (search.py)
        # Attachment records (parley_conversation.attachments; the bytes are the gateways').
        self.attachments: AsyncCollection[dict[str, Any]] = self._db["attachments"]

    async def init(self) -> None:
        """Create the collections' indexes (idempotent); with text indexes where the server
        has them (MongoDB: search_mode "text"; the embedded store: "regex", search.py)."""
        text = await self._has_text_indexes()
        self.search_mode = "text" if text else "regex"
        # allow_index_dropping: an index no longer declared here (an older version's) is
        # dropped, so a changed definition never blocks startup with a name conflict.
        try:
            await init_beanie(
                database=self._db, document_models=documents_for(text), allow_index_dropping=True
            )
        except OperationFailure as exc:
            if not text:
                raise
            # A server that made the probe's text index but refuses these: search by regex
            # rather than not start (the text indexes, if any were made, are dropped again).
            logger.error("text indexes refused (%s): search matches by regex", exc)
            self.search_mode = "regex"
            await init_beanie(
                database=self._db, document_models=documents_for(False), allow_index_dropping=True
            )

    async def _has_text_indexes(self) -> bool:
        """Whether the server builds text indexes (SecantusDB refuses them): one is made on a
        scratch collection, which is dropped again."""
        probe = self._db["parley_probe_text_index"]
        try:
            await probe.create_index([("probe", TEXT)], name="probe_text")
        except OperationFailure as exc:
            logger.info("the store has no text indexes (%s): search matches by regex", exc)
            return False
        finally:
            with contextlib.suppress(PyMongoError):
                await probe.drop()
        return True

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> bool:
        await self._db.command("ping")
        return True

    # ------------------------------------------------------------ conversations

    async def insert_conversation(self, conv: Conversation) -> None:
        doc = to_doc(conv)
        doc["conversationVersion"] = 0
        try:
            await self.conversations.insert_one(doc)
        except DuplicateKeyError:
            raise ParleyError(
                ErrorCode.CONFLICT,
                "a conversation with this conversationId already exists",
                {"field": "conversationId"},
            ) from None

    async def get_conversation(
        self, conversation_id: str, *, with_totals: bool = True
    ) -> Conversation | None:
        if not with_totals:
            doc = await self.conversations.find_one({"_id": conversation_id})
            return conversation_from(doc) if doc else None
        doc, totals = await asyncio.gather(
            self.conversations.find_one({"_id": conversation_id}),
            self.totals.find_one({"_id": conversation_id}),
        )
        if doc is None:
            return None
        return conversation_from(merge_totals_doc(doc, totals) if totals else doc)

    async def _with_totals(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not docs:
            return docs
        found = await self._find_by_ids(self.totals, [d["_id"] for d in docs])
        for d in docs:
            if (t := found.get(d["_id"])) is not None:
                merge_totals_doc(d, t)
        return docs

    @staticmethod
    async def _find_by_ids(
        coll: AsyncCollection[dict[str, Any]], ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        # In chunks: on the embedded store an `_id: {$in}` costs more per key the more keys
        # it has (50 keys ~11 ms, 200 keys ~96 ms; 4 x 50 ~45 ms).
        keys = list(ids)
        chunks = [keys[i : i + IN_CHUNK] for i in range(0, len(keys), IN_CHUNK)]
        found = await asyncio.gather(*(coll.find({"_id": {"$in": c}}).to_list() for c in chunks))
        return {d["_id"]: d for docs in found for d in docs}

    async def _version(self, conversation_id: str) -> int:
        doc = await self.conversations.find_one(
            {"_id": conversation_id}, {"conversationVersion": 1}
        )
        return int(doc.get("conversationVersion", 0)) if doc else -1

    async def update_conversation(self, old: Conversation, new: Conversation) -> bool:
        """Write the user-editable fields of ``new`` if nobody changed them since ``old``.

        Optimistic: the filter compares ``updatedAt`` of ``old``; totals, lastMessage and
        lastSeq are never written here (they move atomically in :meth:`add_totals`).
        """
        doc = to_doc(new)
        fields = (
            "title",
            "titleSource",
            "description",
            "agentId",
            "modelId",
            "conversationType",
            "status",
            "participants",
            "tags",
            "context",
            "isActive",
            "deletedAt",
            "updatedAt",
            "updatedBy",
        )
        set_: dict[str, Any] = {k: doc[k] for k in fields if k in doc}
        unset = {k: "" for k in fields if k not in doc}
        update: dict[str, Any] = {"$set": set_, "$inc": {"conversationVersion": 1}}
        if unset:
            update["$unset"] = unset
        res = await self.conversations.update_one(
            {"_id": old.id, "updatedAt": old.updated_at}, update
        )
        return res.matched_count == 1

    @staticmethod
    def participant_filter(principal: Principal) -> dict[str, Any]:
        """The conversations ``principal`` is an active participant of (an agent: or the
        agent of), not deleted: what its lists and searches cover."""
        query: dict[str, Any] = {}
        if principal.kind is PrincipalKind.USER:
            query["participants"] = {"$elemMatch": {"userId": principal.id, "leftAt": None}}
        elif principal.kind is PrincipalKind.AGENT:
            query["$or"] = [
                {"agentId": principal.id},
                {"participants": {"$elemMatch": {"agentId": principal.id, "leftAt": None}}},
            ]
        query["isActive"] = {"$ne": False}  # deleted conversations are hidden
        return query

    async def list_conversations(
        self,
        principal: Principal,
        status: ConversationStatus | None,
        cursor: str | None,
        limit: int,
    ) -> Page:
        query = self.participant_filter(principal)
        if status is not None:
            query["status"] = status.value
        if cursor:
            at, cid = decode_cursor(cursor)
            page_filter = {
                "$or": [{"createdAt": {"$lt": at}}, {"createdAt": at, "_id": {"$lt": cid}}]
            }
            query = {"$and": [query, page_filter]} if query else page_filter
        docs = (
            await self.conversations.find(query)
            .sort([("createdAt", DESCENDING), ("_id", DESCENDING)])
            .limit(limit + 1)
            .to_list()
        )
        more = len(docs) > limit
        convs = [conversation_from(d) for d in await self._with_totals(docs[:limit])]
        page = Page(items=[wire(c) for c in convs])
        if more and convs:
            last = convs[-1]
            assert last.created_at is not None
            page.next_cursor = encode_cursor(last.created_at, last.id)
        return page

    # ------------------------------------------------------------ the event log

    async def get_conversations(
        self, ids: Sequence[str], *, with_totals: bool = True
    ) -> dict[str, Conversation]:
        """The conversations found; ``with_totals=False`` skips the totals read (the
        sequencer only authorizes: its totals, lastMessage and lastSeq may be stale)."""
        docs = list((await self._find_by_ids(self.conversations, ids)).values())
        if with_totals:
            docs = await self._with_totals(docs)
        return {d["_id"]: conversation_from(d) for d in docs}

    async def add_totals(self, totals: Mapping[str, MessageTotals]) -> None:
        """One atomic upsert per conversation into ``conversation_totals``, all in one
        commit where the server has transactions (totals_store.py)."""
        await self.totals_store.add(totals)

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        doc = await self.messages.find_one(
            {"_id": message_id, "conversationId": conversation_id, LOG_EVENT: {"$exists": False}}
        )
        return await self._as_read(message_from(doc)) if doc else None

    async def _as_read(self, message: Message) -> Message:
        """The message with its ``messageStatus`` as read (statuses.py)."""
        return (await statuses.messages(self.totals, [message]))[0]

    async def update_message(
        self, conversation_id: str, message_id: str, changes: dict[str, Any]
    ) -> Message | None:
        """Set fields of a message that is not deleted; None if none matched."""
        doc = await self.messages.find_one_and_update(
            {
                "_id": message_id,
                "conversationId": conversation_id,
                "deletedAt": None,
                LOG_EVENT: {"$exists": False},
            },
            {"$set": changes},
            return_document=ReturnDocument.AFTER,
        )
        return await self._as_read(message_from(doc)) if doc else None

    async def react(
        self, conversation_id: str, message_id: str, emoji: str, principal_id: str, remove: bool
    ) -> Message | None:
        path = f"reactions.{emoji}"
        op = {"$pull": {path: principal_id}} if remove else {"$addToSet": {path: principal_id}}
        doc = await self.messages.find_one_and_update(
            {
                "_id": message_id,
                "conversationId": conversation_id,
                "deletedAt": None,
                LOG_EVENT: {"$exists": False},
            },
            op,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        reactions = doc.get("reactions") or {}
        if remove and reactions.get(emoji) == []:
            doc = (
                await self.messages.find_one_and_update(
                    {"_id": message_id, "conversationId": conversation_id, path: {"$size": 0}},
                    {"$unset": {path: ""}},
                    return_document=ReturnDocument.AFTER,
                )
                or doc
            )
        return await self._as_read(message_from(doc))

    async def list_messages(
        self, conversation_id: str, after_seq: int | None, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """Messages in ascending seq; ``hasMore`` says whether the page could go on.

        afterSeq: the next ``limit`` after it (more = newer ones exist). beforeSeq alone, or
        neither: the ``limit`` latest before it (more = older ones exist).
        """
        query: dict[str, Any] = {"conversationId": conversation_id, LOG_EVENT: {"$exists": False}}
        bounds: dict[str, int] = {}
        if after_seq is not None:
            bounds["$gt"] = after_seq
        if before_seq is not None:
            bounds["$lt"] = before_seq
        if bounds:
            query["seq"] = bounds
        ascending = after_seq is not None
        docs = (
            await self.messages.find(query)
            .sort("seq", ASCENDING if ascending else DESCENDING)
            .limit(limit + 1)
            .to_list()
        )
        more = len(docs) > limit
        docs = docs[:limit]
        if not ascending:
            docs.reverse()
        return await statuses.messages(self.totals, [message_from(d) for d in docs]), more

    # ------------------------------------------------------------ tasks

    async def insert_task(self, task: dict[str, Any]) -> None:
        await self.tasks.insert_one(dict(task))
