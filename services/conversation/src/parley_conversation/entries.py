"""The entries of the conversation log (:mod:`parley_conversation.log`): a durable event
waiting for its seq, the document it is stored as and the frame it is published as, what an
append returns, and the totals stored messages add to their conversation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bson
from bson.errors import InvalidDocument, InvalidStringData

from parley_contract import envelopes
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.models import Message
from parley_conversation import domain
from parley_conversation.documents import message_entry, message_from, wire
from parley_conversation.idempotency import entry_id

DUPLICATE_KEY = 11000
LOG_EVENT = "event"  # the field that marks a log entry that is not a message


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


def first_unencodable(docs: Sequence[dict[str, Any]]) -> int | None:
    for i, doc in enumerate(docs):
        try:
            bson.encode(doc)
        except UNENCODABLE:
            return i
    return None


def message_as_stored(message: Message, seq: int) -> Message:
    """The message with its seq, and with the id its ``clientMessageId`` gives it
    (idempotency.entry_id) when it has one: a retry of it gets the same id, which the log's
    ``_id`` index stores once."""
    update: dict[str, Any] = {"seq": seq}
    if message.client_message_id is not None:
        update["id"] = entry_id("message", message.conversation_id, message.client_message_id)
    return message.model_copy(update=update)


# What a batch of stored messages adds to its conversation (the rule lives in the domain).
MessageTotals = domain.Totals
totals_of = domain.totals_of


def log_entry(
    conversation_id: str, seq: int, pending: PendingEvent, epoch: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The document of one durable event at ``seq`` and the frame it is published as; the
    entry keeps its ``epoch`` (epochs.py) so that a replay carries the one it was sent with.
    A message with a ``clientMessageId`` must have the id ``entry_id`` derives from it
    (``message_as_stored``): that ``_id`` is what stores it once."""
    if pending.message is not None:
        msg = pending.message(seq)
        if pending.client_message_id is not None and msg.id != entry_id(
            "message", conversation_id, pending.client_message_id
        ):
            raise ValueError("a keyed message's id must be entry_id(...): see message_as_stored")
        doc, data = message_entry(msg)
        doc["epoch"] = epoch
        return doc, _message_frame(data, conversation_id, seq, epoch)
    assert pending.build is not None
    frame = envelopes.event_frame(
        pending.event,
        pending.build(seq),
        conversation_id=conversation_id,
        seq=seq,
        epoch=epoch,
    )
    key = pending.client_message_id
    doc = {
        # Keyed: the _id is what keeps the key once per conversation (idempotency.entry_id).
        "_id": f"{conversation_id}:{seq}"
        if key is None
        else entry_id("event", conversation_id, key),
        "conversationId": conversation_id,
        "seq": seq,
        "epoch": epoch,
        LOG_EVENT: pending.event.value,
        "frame": frame,
    }
    if key is not None:
        doc["clientMessageId"] = key
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
        wire(message_from(doc)),
        doc["conversationId"],
        int(doc["seq"]),
        int(doc.get("epoch") or 0),
    )
