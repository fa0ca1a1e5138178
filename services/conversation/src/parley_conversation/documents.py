"""The collections of the conversation service as Beanie documents, and the conversions
between the contract's models and what is stored.

``init_beanie`` creates the indexes of design doc 3.1/3.2 plus Parley's own from these
declarations; the hot path uses the same collections through pymongo's async API directly
(bulk ``insert_many``, atomic ``$inc``), because per-document validation would cost more
than the write itself.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, ClassVar

from beanie import Document
from pydantic import ConfigDict
from pymongo import ASCENDING, DESCENDING, IndexModel

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.jsonutil import model_json
from parley_contract.models import Conversation, Message

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
    single messages and idempotency by _id (a keyed entry's _id is derived from its
    clientMessageId: idempotency.entry_id). The design doc's (conversationId, createdAt),
    (conversationId, role), (agentId, createdAt) and (parentMessageId) served no query, and
    on the embedded store every index costs about as much per insert as the document itself
    (docs/benchmarks.md, 2026-11-26), and again at each update of the message (an edit, a
    reaction; delivery writes none since the watermark, domain/delivered.py). The partial
    unique (conversationId, clientMessageId) went on 2026-11-30 for that reason (the _id
    does its work). Add one back with the query that needs it.
    """

    class Settings:
        name = "messages"
        validate_on_save = False
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("conversationId", ASCENDING), ("seq", ASCENDING)], unique=True),
        ]


TOTALS_COLLECTION = "conversation_totals"


class ConversationTotalsDocument(_Doc):
    """The counters of a conversation that move with every message, ``_id`` = its id.

    Apart from the conversation document on purpose: the stores rewrite every index entry of
    a document they update, and the conversation's eight indexes (participants multikey)
    made each totals update cost ~1.4 ms on the embedded store, more than the inserts of
    the messages it counted. This one has the ``_id`` index only. Reads add these values to
    the conversation's own (which stay as written before this collection existed). It also
    keeps the conversation's delivery watermark (``deliveredTop``, ``deliveredOther``:
    domain/delivered.py), written with the totals.
    """

    class Settings:
        name = TOTALS_COLLECTION
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


def _text_index(name: str, field: str) -> IndexModel:
    """A text index on one field, declared as MongoDB lists it back (``_fts``/``_ftsx`` keys
    and the implied options), so that Beanie finds it unchanged at the next startup instead
    of dropping and rebuilding it. Language ``none``: no stemming, no stop words."""
    return IndexModel(
        [("_fts", "text"), ("_ftsx", 1)],
        name=name,
        weights={field: 1},
        default_language="none",
        language_override="language",
        textIndexVersion=3,
    )


class ConversationTextDocument(ConversationDocument):
    """``conversations`` with the text index on ``title`` (search.py, MongoDB only)."""

    class Settings(ConversationDocument.Settings):
        indexes: ClassVar[list[IndexModel]] = [
            *ConversationDocument.Settings.indexes,
            _text_index("title_text", "title"),
        ]


class MessageTextDocument(MessageDocument):
    """``messages`` with the text index on ``content`` (search.py, MongoDB only). Every
    message insert updates it: the price of search on MongoDB."""

    class Settings(MessageDocument.Settings):
        indexes: ClassVar[list[IndexModel]] = [
            *MessageDocument.Settings.indexes,
            _text_index("content_text", "content"),
        ]


def documents_for(text_indexes: bool) -> list[type[Document]]:
    """The documents to initialize: with the text indexes when the server builds them (the
    embedded SecantusDB does not)."""
    if not text_indexes:
        return DOCUMENTS
    return [ConversationTextDocument, MessageTextDocument, ConversationTotalsDocument, TaskDocument]


# ---------------------------------------------------------------- conversions


def to_doc(model: Conversation | Message) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True)


def message_doc(message: Message) -> dict[str, Any]:
    """A message as stored: the fields that were set, explicit nulls included, so that it
    reads back as the same wire JSON (design sample 16's ``"result": null`` round-trips)."""
    return message.model_dump(by_alias=True, exclude_unset=True)


# The message's timestamps: BSON dates in the store, ISO strings on the wire.
_MESSAGE_TIMES = tuple(
    (name, Message.model_fields[name].alias or name)
    for name in ("created_at", "updated_at", "edited_at", "deleted_at")
)


def message_entry(message: Message) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(message_doc(message), wire(message))`` from one serialization: the two differ
    only in the timestamps (dates stored, strings on the wire); the nested values are shared,
    so neither may be changed in place."""
    data = wire(message)
    doc = dict(data)
    for name, alias in _MESSAGE_TIMES:
        if alias in doc:
            doc[alias] = getattr(message, name)
    return doc, data


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
    if "epoch" in doc:  # the log entry's epoch (see entries.log_entry), not a message field
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


def wire(model: Conversation | Message) -> dict[str, Any]:
    """A model as its wire JSON."""
    data: dict[str, Any] = model_json(model)
    return data
