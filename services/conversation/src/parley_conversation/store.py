"""The repository: conversations, messages, the durable event log and tasks in MongoDB.

Collections and indexes are declared as Beanie documents (``init_beanie`` creates the
indexes of design doc 3.1/3.2 plus Parley's own); the hot path then uses the same
collections through pymongo's async API directly (bulk ``insert_many``, atomic ``$inc``),
because per-document validation would cost more than the write itself.

Sequencing (see README "Sequencing"): the collection ``messages`` is the conversation log and
the source of truth for ``seq``. A ``message:new`` is its message document; any other durable
event is a document ``{_id: "<conversationId>:<seq>", event, frame}`` in the same collection.
Each claims its seq by being inserted, under a unique ``(conversationId, seq)`` index;
``clientMessageId`` is unique per conversation in the same collection. A seq exists only once
its complete entry is stored, so a crash can never leave a gap, and a message is stored
once, with its seq; a collision (another replica took that seq) is retried with a fresh seq.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

import bson
from beanie import Document, init_beanie
from bson.errors import InvalidDocument, InvalidStringData
from pydantic import ConfigDict, ValidationError
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.monitoring import (
    ConnectionCheckedInEvent,
    ConnectionCheckedOutEvent,
    ConnectionCheckOutFailedEvent,
    ConnectionCheckOutStartedEvent,
    ConnectionClosedEvent,
    ConnectionCreatedEvent,
    ConnectionPoolListener,
    ConnectionReadyEvent,
    PoolClearedEvent,
    PoolClosedEvent,
    PoolCreatedEvent,
    PoolReadyEvent,
)

from parley_contract import envelopes
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import Principal
from parley_contract.jsonutil import model_json
from parley_contract.models import (
    Conversation,
    ConversationStatus,
    LastMessage,
    Message,
    MessageType,
    Role,
)
from parley_conversation.epochs import HighWaterMarks

logger = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
LOG_EVENT = "event"  # the field that marks a log entry that is not a message
_STRING_ONLY = {"clientMessageId": {"$type": "string"}}
IN_CHUNK = 50  # keys per `$in` query (see get_conversations)
MAX_APPEND_ROUNDS = 10_000
SEQ_CACHE_SIZE = 50_000
# PARLEY_CONVERSATION_WRITE_CONCERN -> the client's default write concern (every write of the
# service uses it): a write returns, and a reply can say success, only once it is this durable.
WRITE_CONCERNS: dict[str, dict[str, Any]] = {
    "journaled": {"w": 1, "journal": True},
    "majority": {"w": "majority", "journal": True},
    "acknowledged": {"w": 1, "journal": False},
}


# ---------------------------------------------------------------- collection declarations


class _Doc(Document):
    model_config = ConfigDict(extra="allow")
    id: str  # type: ignore[assignment]


class ConversationDocument(_Doc):
    class Settings:
        name = "conversations"
        validate_on_save = False
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("conversationId", ASCENDING)], unique=True),
            IndexModel([("agentId", ASCENDING)]),
            IndexModel([("status", ASCENDING)]),
            IndexModel([("agentId", ASCENDING), ("status", ASCENDING), ("createdAt", DESCENDING)]),
            IndexModel([("participants.userId", ASCENDING), ("status", ASCENDING)]),
            IndexModel([("participants.agentId", ASCENDING), ("status", ASCENDING)]),
            IndexModel(
                [("createdBy", ASCENDING), ("status", ASCENDING), ("createdAt", DESCENDING)]
            ),
            IndexModel([("createdAt", DESCENDING), ("_id", DESCENDING)]),
        ]


class MessageDocument(_Doc):
    """The conversation log: messages, and the other durable events (with an ``event`` field).

    Only the indexes a query here uses: the log and history pages by (conversationId, seq),
    idempotency by (conversationId, clientMessageId), single messages by _id. The design
    doc's (conversationId, createdAt), (conversationId, role), (agentId, createdAt) and
    (parentMessageId) served no query, and on the embedded store every index costs about as
    much per insert as the document itself (docs/benchmarks.md, 2026-11-26). Add one back
    with the query that needs it.
    """

    class Settings:
        name = "messages"
        validate_on_save = False
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("conversationId", ASCENDING), ("seq", ASCENDING)], unique=True),
            IndexModel(
                [("conversationId", ASCENDING), ("clientMessageId", ASCENDING)],
                unique=True,
                partialFilterExpression=_STRING_ONLY,
            ),
        ]


class ConversationTotalsDocument(_Doc):
    """The counters of a conversation that move with every message, ``_id`` = its id.

    Apart from the conversation document on purpose: the stores rewrite every index entry of
    a document they update, and the conversation's eight indexes (participants multikey)
    made each totals update cost ~1.4 ms on the embedded store, more than the inserts of
    the messages it counted. This one has the ``_id`` index only. Reads add these values to
    the conversation's own (which stay as written before this collection existed).
    """

    class Settings:
        name = "conversation_totals"
        validate_on_save = False
        indexes: ClassVar[list[IndexModel]] = []


class TaskDocument(_Doc):
    class Settings:
        name = "tasks"
        validate_on_save = False
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("conversationId", ASCENDING), ("createdAt", ASCENDING)]),
            IndexModel([("agentId", ASCENDING), ("status", ASCENDING)]),
        ]


DOCUMENTS: list[type[Document]] = [
    ConversationDocument,
    MessageDocument,
    ConversationTotalsDocument,
    TaskDocument,
]


# ---------------------------------------------------------------- conversions


def to_doc(model: Conversation | Message) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True)


def message_doc(message: Message) -> dict[str, Any]:
    """A message as stored: the fields that were set, explicit nulls included, so that it
    reads back as the same wire JSON (design sample 16's ``"result": null`` round-trips)."""
    return message.model_dump(by_alias=True, exclude_unset=True)


def conversation_from(doc: dict[str, Any]) -> Conversation:
    doc.pop("conversationVersion", None)
    return Conversation.model_validate(doc)


TOTAL_SUMS = ("totalMessages", "totalTokens", "totalCost")


def merge_totals_doc(conv: dict[str, Any], totals: dict[str, Any]) -> dict[str, Any]:
    """The conversation document with its ``conversation_totals`` document added in."""
    for name in TOTAL_SUMS:
        if name in totals:
            conv[name] = conv.get(name, 0) + totals[name]
    conv["lastSeq"] = max(int(conv.get("lastSeq") or 0), int(totals.get("lastSeq") or 0))
    last = totals.get("lastMessage")
    if last is not None:
        mine = conv.get("lastMessage")
        if mine is None or (mine.get("seq") or 0) < (last.get("seq") or 0):
            conv["lastMessage"] = last
    return conv


def message_from(doc: dict[str, Any]) -> Message:
    if "epoch" in doc:  # the log entry's epoch (see _log_entry), not a message field
        doc = {k: v for k, v in doc.items() if k != "epoch"}
    return Message.model_validate(doc)


def encode_cursor(created_at: datetime, conv_id: str) -> str:
    raw = f"{int(created_at.timestamp() * 1000)}:{conv_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, conv_id = raw.split(":", 1)
        at = datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    except (ValueError, UnicodeDecodeError):
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, "cursor: not a cursor from this API", {"field": "cursor"}
        ) from None
    return at, conv_id


# ---------------------------------------------------------------- the interface


@dataclass
class PendingEvent:
    """A durable event waiting for its seq; ``build(seq)`` returns the frame's ``data``.

    Or, with ``message`` instead of ``build``, a ``message:new``: ``message(seq)`` is the
    message as stored (the log entry itself).
    """

    event: Event
    build: Callable[[int], Any] | None
    client_message_id: str | None = None
    message: Callable[[int], Message] | None = None


@dataclass
class AppendResult:
    seq: int
    frame: dict[str, Any]
    duplicate: bool = False  # clientMessageId already stored: frame is the earlier one
    # Not stored: the store cannot hold this entry (only its sender gets this error).
    error: ParleyError | None = None


def unstorable() -> ParleyError:
    return ParleyError(
        ErrorCode.VALIDATION_ERROR,
        "the store cannot hold this message (see docs/security.md, limits)",
        {"field": "data"},
    )


# What pymongo raises, before sending, for a document BSON cannot encode.
UNENCODABLE: tuple[type[Exception], ...] = (
    InvalidDocument,
    InvalidStringData,
    OverflowError,
    UnicodeEncodeError,
)


def _first_unencodable(docs: Sequence[dict[str, Any]]) -> int | None:
    for i, doc in enumerate(docs):
        try:
            bson.encode(doc)
        except UNENCODABLE:
            return i
    return None


@dataclass
class MessageTotals:
    messages: int = 0
    tokens: int = 0
    cost: float = 0.0
    last_message: LastMessage | None = None
    max_seq: int = 0


@dataclass
class Page:
    items: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


class Repository(Protocol):
    """What the service needs from a store (one conformance suite: tests/test_store.py)."""

    async def insert_conversation(self, conv: Conversation) -> None: ...
    async def get_conversation(
        self, conversation_id: str, *, with_totals: bool = True
    ) -> Conversation | None: ...
    async def update_conversation(self, old: Conversation, new: Conversation) -> bool: ...
    async def list_conversations(
        self,
        principal: Principal,
        status: ConversationStatus | None,
        cursor: str | None,
        limit: int,
    ) -> Page: ...
    async def get_conversations(
        self, ids: Sequence[str], *, with_totals: bool = True
    ) -> dict[str, Conversation]: ...
    async def append_events(
        self, groups: Mapping[str, Sequence[PendingEvent]]
    ) -> dict[str, list[AppendResult]]: ...
    async def frames_by_client_ids(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[tuple[str, str], dict[str, Any]]: ...
    async def events_since(
        self, conversation_id: str, after_seq: int, until_seq: int | None, limit: int
    ) -> list[dict[str, Any]]: ...
    async def last_seq(self, conversation_id: str) -> int: ...
    async def fold_legacy_events(self) -> list[Message]: ...
    async def add_totals(self, totals: Mapping[str, MessageTotals]) -> None: ...
    async def get_message(self, conversation_id: str, message_id: str) -> Message | None: ...
    async def update_message(
        self, conversation_id: str, message_id: str, changes: dict[str, Any]
    ) -> Message | None: ...
    async def react(
        self, conversation_id: str, message_id: str, emoji: str, principal_id: str, remove: bool
    ) -> Message | None: ...
    async def list_messages(
        self, conversation_id: str, after_seq: int | None, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]: ...
    async def insert_task(self, task: dict[str, Any]) -> None: ...
    async def ping(self) -> bool: ...


# ---------------------------------------------------------------- MongoDB


class _ForgetSeqsOnPoolCleared(ConnectionPoolListener):
    """pymongo's connection monitoring: the driver clears a server's pool when it finds the
    server unreachable or changed (a network error, a restart, a step-down); that drops the
    store's cached next seqs (MongoStore.forget_seqs). Connection-pool events are published
    synchronously (server events would need a running loop when the client is made)."""

    def __init__(self, store: MongoStore) -> None:
        self._store = store

    def pool_cleared(self, event: PoolClearedEvent) -> None:
        self._store.forget_seqs()

    def pool_created(self, event: PoolCreatedEvent) -> None:
        return None

    def pool_ready(self, event: PoolReadyEvent) -> None:
        return None

    def pool_closed(self, event: PoolClosedEvent) -> None:
        return None

    def connection_created(self, event: ConnectionCreatedEvent) -> None:
        return None

    def connection_ready(self, event: ConnectionReadyEvent) -> None:
        return None

    def connection_closed(self, event: ConnectionClosedEvent) -> None:
        return None

    def connection_check_out_started(self, event: ConnectionCheckOutStartedEvent) -> None:
        return None

    def connection_check_out_failed(self, event: ConnectionCheckOutFailedEvent) -> None:
        return None

    def connection_checked_out(self, event: ConnectionCheckedOutEvent) -> None:
        return None

    def connection_checked_in(self, event: ConnectionCheckedInEvent) -> None:
        return None


class MongoStore:
    """The repository on any MongoDB-wire server (SecantusDB embedded, or MongoDB)."""

    def __init__(
        self, url: str, database: str, *, timeout_ms: int = 5000, write_concern: str = "journaled"
    ) -> None:
        if write_concern not in WRITE_CONCERNS:
            raise ValueError(f"write concern: one of {', '.join(WRITE_CONCERNS)}")
        self._next_seq: OrderedDict[str, int] = OrderedDict()
        self._epochs: dict[str, int] = {}  # the epoch of each cached next seq (epochs.py)
        self.marks: HighWaterMarks | None = None  # set once NATS is up (the service)
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url,
            **WRITE_CONCERNS[write_concern],
            event_listeners=[_ForgetSeqsOnPoolCleared(self)],
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            uuidRepresentation="standard",
        )
        self._db = self._client[database]
        self.conversations: AsyncCollection[dict[str, Any]] = self._db["conversations"]
        self.messages: AsyncCollection[dict[str, Any]] = self._db["messages"]
        # The event log before 2026-11-26 (frames of every durable event, messages written
        # twice); folded into `messages` at startup (parley_conversation.legacy).
        self.legacy_events: AsyncCollection[dict[str, Any]] = self._db["events"]
        self.totals: AsyncCollection[dict[str, Any]] = self._db["conversation_totals"]
        self.tasks: AsyncCollection[dict[str, Any]] = self._db["tasks"]

    async def init(self) -> None:
        """Create the collections' indexes (idempotent)."""
        # allow_index_dropping: an index no longer declared here (an older version's) is
        # dropped, so a changed definition never blocks startup with a name conflict.
        await init_beanie(database=self._db, document_models=DOCUMENTS, allow_index_dropping=True)

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

    async def list_conversations(
        self,
        principal: Principal,
        status: ConversationStatus | None,
        cursor: str | None,
        limit: int,
    ) -> Page:
        query: dict[str, Any] = {}
        if principal.kind is PrincipalKind.USER:
            query["participants"] = {"$elemMatch": {"userId": principal.id, "leftAt": None}}
        elif principal.kind is PrincipalKind.AGENT:
            query["$or"] = [
                {"agentId": principal.id},
                {"participants": {"$elemMatch": {"agentId": principal.id, "leftAt": None}}},
            ]
        query["isActive"] = {"$ne": False}  # deleted conversations are hidden
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
        page = Page(items=[_wire(c) for c in convs])
        if more and convs:
            last = convs[-1]
            assert last.created_at is not None
            page.next_cursor = encode_cursor(last.created_at, last.id)
        return page

    # ------------------------------------------------------------ the event log

    async def last_seq(self, conversation_id: str) -> int:
        doc = await self.messages.find_one(
            {"conversationId": conversation_id}, {"seq": 1}, sort=[("seq", DESCENDING)]
        )
        return int(doc["seq"]) if doc else 0

    async def last_seqs(self, ids: Sequence[str]) -> dict[str, int]:
        """The highest stored seq of each conversation (0 if none)."""
        values = await asyncio.gather(*(self.last_seq(cid) for cid in ids))
        return dict(zip(ids, values, strict=True))

    def _remember(self, conversation_id: str, next_seq: int) -> None:
        self._next_seq[conversation_id] = next_seq
        self._next_seq.move_to_end(conversation_id)
        while len(self._next_seq) > SEQ_CACHE_SIZE:
            old, _ = self._next_seq.popitem(last=False)
            self._epochs.pop(old, None)

    async def get_conversations(
        self, ids: Sequence[str], *, with_totals: bool = True
    ) -> dict[str, Conversation]:
        """The conversations found; ``with_totals=False`` skips the totals read (the
        sequencer only authorizes: its totals, lastMessage and lastSeq may be stale)."""
        docs = list((await self._find_by_ids(self.conversations, ids)).values())
        if with_totals:
            docs = await self._with_totals(docs)
        return {d["_id"]: conversation_from(d) for d in docs}

    async def append_events(
        self, groups: Mapping[str, Sequence[PendingEvent]]
    ) -> dict[str, list[AppendResult]]:
        """See :meth:`_append_events`. After an error (or a cancellation) what was stored is
        unknown: the next seqs of these conversations are read from the log again, never
        taken from a cache that may be behind or ahead of it (issue 11)."""
        try:
            return await self._append_events(groups)
        except BaseException:
            for cid in groups:
                self._next_seq.pop(cid, None)
                self._epochs.pop(cid, None)
            raise

    def forget_seqs(self) -> None:
        """Drop every cached next seq: the store was unreachable or changed (a restart may
        have lost what was not durable); the next writes read the log's maximum."""
        if self._next_seq:
            logger.info(
                "store connection pool cleared: %d cached next seqs dropped", len(self._next_seq)
            )
        self._next_seq.clear()
        self._epochs.clear()

    async def _load_sequences(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(the log's highest seq, the epoch to write with) of conversations not cached:
        the epoch moves on when the log is shorter than the high-water mark (epochs.py)."""

        async def one(cid: str) -> tuple[int, int]:
            # The mark first, then the log: a mark is published only after the entries up to
            # it are stored, so a log read after it reaches it unless entries were lost. (The
            # other order let another replica's write and mark land in between: a false
            # "shorter", a new epoch for nothing.)
            mark = await self.marks.get(cid) if self.marks is not None else None
            last, epoch = (await self._last_entries([cid]))[cid]
            if mark is not None:
                mark_epoch, mark_seq = mark
                epoch = max(epoch, mark_epoch)
                if mark_seq > last:
                    epoch += 1
                    logger.warning(
                        "conversation %s: seq %d was published but the log ends at %d: "
                        "epoch %d begins",
                        cid,
                        mark_seq,
                        last,
                        epoch,
                    )
                    assert self.marks is not None
                    await self.marks.put(cid, epoch, last)
            return last, epoch

        values = await asyncio.gather(*(one(cid) for cid in ids))
        return dict(zip(ids, values, strict=True))

    async def _last_entries(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(seq, epoch) of the last log entry of each conversation ((0, 0) if none)."""

        async def one(cid: str) -> tuple[int, int]:
            doc = await self.messages.find_one(
                {"conversationId": cid}, {"seq": 1, "epoch": 1}, sort=[("seq", DESCENDING)]
            )
            return (int(doc["seq"]), int(doc.get("epoch") or 0)) if doc else (0, 0)

        values = await asyncio.gather(*(one(cid) for cid in ids))
        return dict(zip(ids, values, strict=True))

    async def epoch_of(self, conversation_id: str) -> int:
        """The epoch new entries of this conversation get (``conversation:joined``)."""
        if conversation_id in self._epochs and conversation_id in self._next_seq:
            return self._epochs[conversation_id]
        last, epoch = (await self._load_sequences([conversation_id]))[conversation_id]
        self._remember(conversation_id, last + 1)
        self._epochs[conversation_id] = epoch
        return epoch

    async def _append_events(
        self, groups: Mapping[str, Sequence[PendingEvent]]
    ) -> dict[str, list[AppendResult]]:
        """Store each conversation's frames in order with consecutive seqs, in one
        ordered ``insert_many`` for all of them; never a gap, never a duplicate.

        The first seq tried is this replica's cache, else the log's maximum + 1. An ordered
        insert stops at the first duplicate key: everything before it is stored (a prefix per
        conversation, so a crash or a collision never leaves a hole); a taken seq re-reads the
        maximum of every conversation still to be written, a stored clientMessageId returns
        the earlier frame; the rest is retried.
        """
        results: dict[str, list[AppendResult | None]] = {
            cid: [None] * len(evts) for cid, evts in groups.items()
        }
        pos = dict.fromkeys(groups, 0)
        nxt: dict[str, int] = {}
        unknown = []
        for cid in groups:
            guess = self._next_seq.get(cid)
            if guess:
                nxt[cid] = guess
            else:
                unknown.append(cid)
        for cid, (last, epoch) in (await self._load_sequences(unknown)).items():
            nxt[cid] = last + 1
            self._epochs[cid] = epoch
        epochs = {cid: self._epochs.get(cid, 0) for cid in groups}
        rounds = 0
        while True:
            docs: list[dict[str, Any]] = []
            frames: list[dict[str, Any]] = []
            owners: list[tuple[str, int]] = []
            for cid, evts in groups.items():
                at = nxt[cid]
                for k in range(pos[cid], len(evts)):
                    if results[cid][k] is not None:
                        continue  # refused by the store: it takes no seq
                    doc, frame = _log_entry(cid, at, evts[k], epochs[cid])
                    at += 1
                    docs.append(doc)
                    frames.append(frame)
                    owners.append((cid, k))
            if not docs:
                break
            rounds += 1
            if rounds > MAX_APPEND_ROUNDS:
                raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "the store is too busy, retry")
            refused: int | None = None  # index in docs of an entry the store cannot hold
            try:
                await self.messages.insert_many(docs, ordered=True)
                done = len(docs)
                error: dict[str, Any] | None = None
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or []
                if not errors:
                    raise
                error = errors[0]
                done = int(error["index"])
                if error.get("code") != DUPLICATE_KEY:
                    # The store refused this one entry (ordered: the ones before it are
                    # stored); it fails alone, the rest of the batch goes on.
                    refused = done
                    why = str(error.get("errmsg") or "refused by the store")
            except UNENCODABLE as exc:
                # pymongo could not encode an entry, so nothing from it on was sent (one
                # before it may have been, when the insert took several messages).
                bad = _first_unencodable(docs)
                if bad is None:
                    raise
                done = await self._stored_prefix(docs[:bad])
                error, refused, why = {"index": done}, bad, f"{type(exc).__name__}: {exc}"
            first_unstored: set[str] = set()
            for j in range(done):
                cid, k = owners[j]
                results[cid][k] = AppendResult(docs[j]["seq"], frames[j])
                pos[cid] = k + 1
                nxt[cid] = docs[j]["seq"] + 1
            for j in range(done, len(docs)):
                cid, _k = owners[j]
                if cid not in first_unstored:
                    first_unstored.add(cid)
                    nxt[cid] = docs[j]["seq"]  # first one not stored: try that seq again
            if error is None:
                break
            if refused is not None:
                cid, k = owners[refused]
                logger.warning("the store cannot hold an entry of %s: %s", cid, why[:300])
                results[cid][k] = AppendResult(0, {}, error=unstorable())
                continue  # the others again, that one left out (it takes no seq)
            cid, k = owners[done]
            failed = groups[cid][k]
            existing = None
            if failed.client_message_id is not None:
                existing = await self.messages.find_one(
                    {"conversationId": cid, "clientMessageId": failed.client_message_id}
                )
            if existing is not None and existing["seq"] != docs[done]["seq"]:
                # Already stored (a retry racing with its original): answer with that frame.
                results[cid][k] = AppendResult(
                    int(existing["seq"]), frame_of(existing), duplicate=True
                )
                pos[cid] = k + 1  # nxt[cid] stays: that seq is still free
            else:
                # Another replica took this seq: continue after the log's maximum. It is
                # writing these conversations too, most likely, so every conversation still
                # to be written re-reads its maximum now: an ordered insert stops at the
                # first collision, and one round per stale conversation used to make two
                # replicas slower than one.
                rest = list(dict.fromkeys(c for c, _ in owners[done:]))
                for c, (last, epoch) in (await self._last_entries(rest)).items():
                    nxt[c] = last + 1
                    epochs[c] = max(epochs[c], epoch)  # it may have begun a new epoch
        out: dict[str, list[AppendResult]] = {}
        for cid, res in results.items():
            self._remember(cid, nxt[cid])
            self._epochs[cid] = epochs[cid]
            out[cid] = [r for r in res if r is not None]
        return out

    async def _stored_prefix(self, docs: Sequence[dict[str, Any]]) -> int:
        """How many of ``docs`` (an ordered insert's first ones) are stored: pymongo sends a
        large insert in several messages, so the ones before an unencodable entry may be."""
        if not docs:
            return 0
        ids = [d["_id"] for d in docs]
        found = await self.messages.find({"_id": {"$in": ids}}, {"_id": 1}).to_list()
        have = {d["_id"] for d in found}
        n = 0
        while n < len(ids) and ids[n] in have:
            n += 1
        return n

    async def frames_by_client_ids(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Stored frames of these (conversationId, clientMessageId) pairs, in one query."""
        ids = {cmid for cmids in wanted.values() for cmid in cmids}
        if not ids:
            return {}
        docs = await self.messages.find(
            {"conversationId": {"$in": list(wanted)}, "clientMessageId": {"$in": list(ids)}}
        ).to_list()
        return {
            (d["conversationId"], d["clientMessageId"]): frame_of(d)
            for d in docs
            if d["clientMessageId"] in wanted.get(d["conversationId"], ())
        }

    async def events_since(
        self, conversation_id: str, after_seq: int, until_seq: int | None, limit: int
    ) -> list[dict[str, Any]]:
        bounds: dict[str, int] = {"$gt": after_seq}
        if until_seq is not None:
            bounds["$lte"] = until_seq
        docs = (
            await self.messages.find({"conversationId": conversation_id, "seq": bounds})
            .sort("seq", ASCENDING)
            .limit(limit)
            .to_list()
        )
        return [frame_of(d) for d in docs]

    # ------------------------------------------------------------ messages

    async def insert_messages(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        try:
            await self.messages.insert_many([message_doc(m) for m in messages], ordered=False)
        except BulkWriteError as exc:
            # Re-applying an event whose message is already stored is fine; anything else not.
            other = [
                e for e in exc.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY
            ]
            if other:
                raise

    async def fold_legacy_events(self, chunk: int = 500) -> list[Message]:
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
                await self.messages.insert_many(entries, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                taken = {int(e["index"]) for e in errors}
            inserted.extend(m for i, m in enumerate(messages) if m is not None and i not in taken)

        async for doc in self.legacy_events.find({}):
            batch.append(doc)
            if len(batch) >= chunk:
                await flush()
        await flush()
        await self.legacy_events.drop()
        return inserted

    async def add_totals(self, totals: Mapping[str, MessageTotals]) -> None:
        """One atomic upsert per conversation into ``conversation_totals``, one bulk write.

        Update operators only (``$inc`` the sums, ``$max`` the seq): no read-modify-write.
        ``lastMessage`` moves by ``$max`` too: stored with ``seq`` as its first field, two of
        them compare by seq (BSON compares embedded documents field by field, in order), so
        it only ever moves to a higher seq. On the embedded store an update pipeline doing
        the same (``$cond`` on the document's own seq) cost twice as much per update.
        """
        ops: list[UpdateOne] = []
        for cid, t in totals.items():
            update: dict[str, Any] = {"$max": {"lastSeq": t.max_seq}}
            if t.messages:
                update["$inc"] = {
                    "totalMessages": t.messages,
                    "totalTokens": t.tokens,
                    "totalCost": t.cost,
                }
            last = t.last_message
            if last is not None and last.seq is not None:
                update["$max"]["lastMessage"] = {
                    "seq": last.seq,
                    **last.model_dump(by_alias=True, exclude_none=True),
                }
            ops.append(UpdateOne({"_id": cid}, update, upsert=True))
        for attempt in range(3):
            if not ops:
                return
            try:
                await self.totals.bulk_write(ops, ordered=False)
                return
            except BulkWriteError as exc:
                # Two replicas upserting a conversation's first totals: the loser's insert
                # hits the _id index. Only those ops are retried (the others are applied:
                # retrying them would count twice); the document exists now.
                errors = exc.details.get("writeErrors") or []
                if attempt == 2 or any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                ops = [ops[int(e["index"])] for e in errors]

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        doc = await self.messages.find_one(
            {"_id": message_id, "conversationId": conversation_id, LOG_EVENT: {"$exists": False}}
        )
        return message_from(doc) if doc else None

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
        return message_from(doc) if doc else None

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
        return message_from(doc)

    async def turn_answered(self, conversation_id: str, message_id: str, seq: int) -> bool:
        """Whether an agent's final answer (``text`` or ``error``) to the user message at
        ``seq`` is in the log (the agent watch, rarely: only for an agent gone offline)."""
        doc = await self.messages.find_one(
            {
                "conversationId": conversation_id,
                "seq": {"$gt": seq},
                "parentMessageId": message_id,
                "role": Role.ASSISTANT.value,
                "messageType": {"$in": [MessageType.TEXT.value, MessageType.ERROR.value]},
            },
            {"_id": 1},
        )
        return doc is not None

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
        return [message_from(d) for d in docs], more

    # ------------------------------------------------------------ tasks

    async def insert_task(self, task: dict[str, Any]) -> None:
        await self.tasks.insert_one(dict(task))


def _log_entry(
    conversation_id: str, seq: int, pending: PendingEvent, epoch: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The document of one durable event at ``seq`` and the frame it is published as; the
    entry keeps its ``epoch`` (epochs.py) so that a replay carries the one it was sent with."""
    if pending.message is not None:
        message = pending.message(seq)
        doc = message_doc(message)
        doc["epoch"] = epoch
        return doc, _message_frame(_wire(message), conversation_id, seq, epoch)
    assert pending.build is not None
    frame = envelopes.event_frame(
        pending.event,
        pending.build(seq),
        conversation_id=conversation_id,
        seq=seq,
        epoch=epoch,
    )
    doc = {
        "_id": f"{conversation_id}:{seq}",
        "conversationId": conversation_id,
        "seq": seq,
        "epoch": epoch,
        LOG_EVENT: pending.event.value,
        "frame": frame,
    }
    if pending.client_message_id is not None:
        doc["clientMessageId"] = pending.client_message_id
    return doc, frame


def _message_frame(
    data: dict[str, Any], conversation_id: str, seq: int, epoch: int = 0
) -> dict[str, Any]:
    # Stamped with the message's createdAt, live and replayed alike (nothing else is stored).
    return envelopes.event_frame(
        Event.MESSAGE_NEW,
        data,
        conversation_id=conversation_id,
        seq=seq,
        timestamp=data.get("createdAt"),
        epoch=epoch,
    )


def frame_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The frame a log entry was published as: a message's is built from the message."""
    if LOG_EVENT in doc:
        frame: dict[str, Any] = doc["frame"]
        return frame
    return _message_frame(
        _wire(message_from(doc)),
        doc["conversationId"],
        int(doc["seq"]),
        int(doc.get("epoch") or 0),
    )


def _wire(model: Conversation | Message) -> dict[str, Any]:
    data: dict[str, Any] = model_json(model)
    return data
