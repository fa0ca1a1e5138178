"""Reads answered by the conversation service (request/reply, queue group ``conversation``):
a principal's conversations, one conversation, messages by seq, durable events since a seq
(resume and gap fill), search, attachment records, the batched rejoin. Their routes and
models are the contract's (``parley_contract.routes.QUERY_ROUTES``); the commands are in
:mod:`parley_conversation.handlers`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from parley_contract import commands, jsonutil, subjects
from parley_contract.errors import ParleyError
from parley_contract.ids import check_id
from parley_contract.internal import CommandRequest, EventsSinceRequest
from parley_contract.jsonutil import model_json
from parley_contract.queries import (
    GetConversationQuery,
    ListConversationsQuery,
    ListMessagesQuery,
    SearchQuery,
)
from parley_contract.routes import REJOIN_SUBJECT, Service, query_routes_of
from parley_conversation import domain, rejoin, search
from parley_conversation.handlers import conversation

if TYPE_CHECKING:
    from parley_conversation.service import ConversationService

M = TypeVar("M", bound=BaseModel)
REPLY_ENVELOPE_BYTES = 4096  # room for the reply envelope around a page's items


def _decode(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise commands.validation_error(exc) from None


def _data(model: type[M], body: bytes) -> tuple[CommandRequest, M]:
    req = _decode(CommandRequest, body)
    # Query parameters the HTTP caller left out may arrive as null: same as absent.
    data = {k: v for k, v in req.data.items() if v is not None}
    try:
        return req, model.model_validate(data)
    except ValidationError as exc:
        raise commands.validation_error(exc) from None


async def list_conversations(svc: ConversationService, body: bytes) -> Any:
    req, q = _data(ListConversationsQuery, body)
    await svc.sequencer.settle_totals()  # read-your-writes for this replica's totals
    page = await svc.store.list_conversations(req.principal, q.status, q.cursor, q.limit)
    await svc.receipts.unread_counts(req.principal, page.items)
    await svc.receipts.add_names(page.items)
    return {"items": page.items, "nextCursor": page.next_cursor}


async def get_conversation(svc: ConversationService, body: bytes) -> Any:
    req, q = _data(GetConversationQuery, body)
    await svc.sequencer.settle_totals()  # read-your-writes for this replica's totals
    conv = await conversation(svc, req.principal, q.conversation_id)
    wire = model_json(conv)
    await svc.receipts.unread_counts(req.principal, [wire])
    await svc.receipts.add_names([wire])
    return wire


async def list_messages(svc: ConversationService, body: bytes) -> Any:
    req, q = _data(ListMessagesQuery, body)
    await conversation(svc, req.principal, q.conversation_id, totals=False)
    items, more = await svc.store.list_messages(
        q.conversation_id, q.after_seq, q.before_seq, q.limit
    )
    wire = [svc.attachments.sign(model_json(m)) for m in items]
    # afterSeq pages run forward (cut the newest end); the others are "the latest N"
    # (cut the oldest end). Either way the cut side is the one hasMore speaks of.
    kept, cut = _cap_reply(svc, wire, keep_end=q.after_seq is None)
    return {"items": kept, "hasMore": more or cut}


async def events_since(svc: ConversationService, body: bytes) -> Any:
    req = _decode(EventsSinceRequest, body)
    cid = check_id(req.conversation_id, "conversationId")
    await conversation(svc, req.principal, cid, totals=False)
    frames = await svc.store.events_since(cid, req.after_seq, req.until_seq, req.limit)
    frames = [svc.attachments.sign_frame(f) for f in frames]
    last = await svc.store.last_seq(cid)
    # A reply over the NATS max payload is never delivered: cut the page in bytes.
    frames, _cut = _cap_reply(svc, frames)
    end = last if req.until_seq is None else min(last, req.until_seq)
    sent = frames[-1].get("seq") if frames else None
    more = isinstance(sent, int) and sent < end
    return {"events": frames, "lastSeq": last, "hasMore": more}


def _reply_limits(svc: ConversationService) -> tuple[int, int]:
    """(page budget, hard limit of one item) in bytes, under the NATS max payload."""
    try:
        max_payload = int(svc.broker.connection.max_payload)
    except AttributeError:  # not connected yet
        max_payload = 1024 * 1024
    hard = max(1024, max_payload - REPLY_ENVELOPE_BYTES)
    return min(svc.settings.max_reply_bytes, hard), hard


def _cap_reply(
    svc: ConversationService, items: list[Any], *, keep_end: bool = False
) -> tuple[list[Any], bool]:
    budget, hard = _reply_limits(svc)
    sizes = [len(jsonutil.dumps(x)) + 1 for x in items]
    try:
        return domain.cap_page(items, sizes, budget, hard, keep_end=keep_end)
    except ParleyError as exc:
        details = dict(exc.details or {})
        index = details.pop("index", None)
        if isinstance(index, int) and isinstance(items[index], dict):
            details["seq"] = items[index].get("seq")
        raise ParleyError(exc.code, exc.message, details) from None


async def search_conversations(svc: ConversationService, body: bytes) -> Any:
    req, q = _data(SearchQuery, body)
    return await search.search(svc.store, req.principal, q)


async def attachment_register(svc: ConversationService, body: bytes) -> Any:
    req = _decode(CommandRequest, body)
    return await svc.attachments.register(req.principal, req.data)


async def attachment_get(svc: ConversationService, body: bytes) -> Any:
    req = _decode(CommandRequest, body)
    return await svc.attachments.get(req.principal, req.data)


Run = Callable[["ConversationService", bytes], Awaitable[Any]]

# One function per query route of this service (parley_contract.routes.QUERY_ROUTES).
RUN: dict[str, Run] = {
    subjects.QUERY_CONVERSATIONS_LIST: list_conversations,
    subjects.QUERY_CONVERSATION_GET: get_conversation,
    subjects.QUERY_MESSAGES_LIST: list_messages,
    subjects.QUERY_EVENTS_SINCE: events_since,
    subjects.QUERY_SEARCH: search_conversations,
    subjects.ATTACHMENT_REGISTER: attachment_register,
    subjects.QUERY_ATTACHMENT_GET: attachment_get,
    REJOIN_SUBJECT: rejoin.rejoin,
}


@dataclass(frozen=True, slots=True)
class Query:
    subject: str
    op: str  # the metrics' operation label
    title: str
    run: Run
    partitioned: bool = False  # also answered on its partition's subject, by the owner


QUERIES: list[Query] = [
    Query(r.subject, r.op, r.title, RUN[r.subject], r.partitioned)
    for r in query_routes_of(Service.CONVERSATION)
]
assert set(RUN) == {q.subject for q in QUERIES}, "one function per conversation query route"
