"""The one route table: every client command, who handles it and what it carries.

For each command (an :class:`~parley_contract.events.Event` sent by a client): the NATS
subject it travels on, the service that handles it, its payload model (the client's
``data``), the model of its reply's ``data``, who may send it (the kinds in the event
registry) and whether it writes (then the gateway gives it an idempotency key, so that a
retry on another replica is applied once).

- The gateway looks the route up for every client frame: a route of the gateway's own
  (``Service.GATEWAY``) is answered there; any other is relayed to its subject as a
  :class:`RouteRequest`, whose ``data`` the handling service validates (the authority: the
  gateway does not validate it a second time).
- The conversation service subscribes once per route with ``service=CONVERSATION`` and decodes
  each request once, straight from the bytes, with ``route.request`` (payload included).
- The agent bridge writes through the same table (``ROUTES[Event.MESSAGE_SEND]``).

Adding a command: one entry here, one handler function in the service that handles it, their
tests (docs/contributing.md).

The reads and internal requests of the NATS side (no client event: HTTP reads, resume, uploads,
the batched rejoin) have their routes here too, :data:`QUERY_ROUTES`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError, create_model

from parley_contract import attachments, subjects
from parley_contract.commands import (
    CommandData,
    ConversationCreate,
    ConversationDelete,
    ConversationJoin,
    ConversationLeave,
    ConversationRead,
    ConversationUpdate,
    MessageDelete,
    MessageEdit,
    MessageReact,
    MessageSend,
    MessageStop,
    Presence,
    TaskCreate,
    ToolCallCommand,
    Typing,
    validation_error,
)
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import COMMANDS, REGISTRY, Event, PrincipalKind
from parley_contract.internal import RouteRequest
from parley_contract.models import Conversation, Message
from parley_contract.partitions import PARTITIONS, partition_of
from parley_contract.queries import (
    GetConversationQuery,
    ListConversationsQuery,
    ListMessagesQuery,
    SearchQuery,
)
from parley_contract.server_events import (
    ConversationJoinedData,
    LeaveReply,
    PresenceReply,
    ReadReply,
    StopReply,
    Task,
    ToolCallReply,
)


class Service(enum.StrEnum):
    """Who handles a command."""

    GATEWAY = "gateway"  # answered by the gateway the client is connected to
    CONVERSATION = "conversation"  # queue group subjects.QUEUE_CONVERSATION
    AGENT_BRIDGE = "agent-bridge"  # queue group subjects.QUEUE_AGENT_BRIDGE


@dataclass(frozen=True, slots=True)
class Route:
    event: Event
    service: Service
    payload: type[CommandData]
    reply: type[BaseModel] | None  # the reply's data; None: data is null
    writes: bool = False  # relayed with an idempotency key (applied once across retries)
    # The request a service decodes in one step (principal + typed data): built from payload.
    request: type[RouteRequest] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        request = create_model(
            f"{self.payload.__name__}Request",
            __base__=RouteRequest,
            data=(self.payload, ...),
        )
        object.__setattr__(self, "request", request)

    @property
    def subject(self) -> str:
        """The NATS request/reply subject (a gateway route has none on the bus, but its name
        stays reserved)."""
        return subjects.command(self.event)

    @property
    def partitioned(self) -> bool:
        """A conversation-service write of one conversation: sent to the subject of the
        conversation's partition, which only its owning replica serves (docs/affinity.md)."""
        return (
            self.service is Service.CONVERSATION
            and self.writes
            and "conversation_id" in self.payload.model_fields
        )

    def subject_for(self, data: Any) -> str:
        """Where to send this command with ``data`` (the client's, unvalidated): its
        partition's subject when it names a conversation, else :attr:`subject` (any replica:
        a create without an id). The partition is a number, whatever the id: nothing a
        client writes reaches the subject."""
        if self.partitioned and isinstance(data, dict):
            cid = data.get("conversationId")
            if isinstance(cid, str) and cid:
                return subjects.partition_command(self.event, partition_of(cid))
        return self.subject

    @property
    def senders(self) -> frozenset[PrincipalKind]:
        return REGISTRY[self.event].senders

    @property
    def summary(self) -> str:
        return REGISTRY[self.event].summary

    def may_send(self, kind: PrincipalKind) -> bool:
        return kind in self.senders

    def parse(self, data: Any) -> CommandData:
        """Validate a command's ``data`` alone; raises ParleyError(VALIDATION_ERROR)."""
        return parse_payload(self.event, data)

    def decode(self, body: bytes | str) -> RouteRequest:
        """A request from its bytes, payload included, in one pass; raises ParleyError
        (VALIDATION_ERROR naming the field of ``data`` as the client wrote it)."""
        try:
            return self.request.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error(exc, under="data") from None


_G, _C, _B = Service.GATEWAY, Service.CONVERSATION, Service.AGENT_BRIDGE

ROUTES: dict[Event, Route] = {
    r.event: r
    for r in [
        Route(Event.CONVERSATION_CREATE, _C, ConversationCreate, Conversation, writes=True),
        # The gateway asks the service (authorization, lastSeq), then subscribes and replays.
        Route(Event.CONVERSATION_JOIN, _C, ConversationJoin, ConversationJoinedData),
        Route(Event.CONVERSATION_LEAVE, _G, ConversationLeave, LeaveReply),
        Route(Event.CONVERSATION_UPDATE, _C, ConversationUpdate, Conversation, writes=True),
        Route(Event.CONVERSATION_DELETE, _C, ConversationDelete, Conversation, writes=True),
        Route(Event.MESSAGE_SEND, _C, MessageSend, Message, writes=True),
        Route(Event.MESSAGE_EDIT, _C, MessageEdit, Message, writes=True),
        Route(Event.MESSAGE_DELETE, _C, MessageDelete, Message, writes=True),
        Route(Event.MESSAGE_REACT, _C, MessageReact, Message, writes=True),
        Route(Event.MESSAGE_STOP, _C, MessageStop, StopReply),
        Route(Event.TYPING_START, _G, Typing, None),
        Route(Event.TYPING_STOP, _G, Typing, None),
        Route(Event.PRESENCE_ONLINE, _G, Presence, PresenceReply),
        Route(Event.PRESENCE_OFFLINE, _G, Presence, PresenceReply),
        Route(Event.TOOL_CALL, _B, ToolCallCommand, ToolCallReply),
        Route(Event.TASK_CREATE, _C, TaskCreate, Task, writes=True),
        # Moves the caller's read cursor (receipts); a repeat changes nothing.
        Route(Event.CONVERSATION_READ, _C, ConversationRead, ReadReply),
    ]
}

assert set(ROUTES) == set(COMMANDS), "every command needs a route"

# The batched rejoin of resumed sessions (internal.RejoinRequest, gateway → the service that
# answers joins): derived from the join route, so it goes wherever conversation:join goes.
REJOIN_SUBJECT: str = f"{ROUTES[Event.CONVERSATION_JOIN].subject}.batch"

# Consecutive message:sends of one connection to one conversation as one request
# (internal.SendBatchRequest, gateway → the owner of the conversation's partition): there
# is no plain subject for it (a partition without an owner, or an owner that serves no
# batches, answers "no responders": the gateway sends them one by one).
SEND_BATCH_ROUTE: Route = ROUTES[Event.MESSAGE_SEND]


def send_batch_subject(conversation_id: str) -> str:
    """Where a batch of sends to ``conversation_id`` goes: its partition's batch subject."""
    return subjects.partition_batch(SEND_BATCH_ROUTE.event, partition_of(conversation_id))


_BATCH_BY_SUBJECT: dict[str, Route] = {
    subjects.partition_batch(SEND_BATCH_ROUTE.event, n): SEND_BATCH_ROUTE for n in range(PARTITIONS)
}


def batch_route_of_subject(subject: str) -> Route | None:
    """The route whose batches a partition's batch subject carries (None: not one)."""
    return _BATCH_BY_SUBJECT.get(subject)


# Views of ROUTES for the generated schemas: each command's payload, and its reply's data.
PAYLOADS: dict[Event, type[CommandData]] = {e: r.payload for e, r in ROUTES.items()}
COMMAND_REPLIES: dict[Event, type[BaseModel]] = {
    e: r.reply for e, r in ROUTES.items() if r.reply is not None
}


@dataclass(frozen=True, slots=True)
class QueryRoute:
    """A read or internal request on the NATS side (no client event): its subject, who
    answers it, its metrics label and title, and the model of the request's ``data`` (None:
    the whole request has a model of its own in :mod:`parley_contract.internal`)."""

    subject: str
    service: Service
    op: str
    title: str
    data: type[BaseModel] | None
    # A read of one conversation (``conversationId`` in its data) answered by the owner of
    # the conversation's partition, as its writes are (docs/affinity.md): the owner's
    # totals are read-your-writes (another replica's trail by its totals interval).
    partitioned: bool = False

    def subject_for(self, data: Any) -> str:
        """Where to send this query with ``data`` (the caller's, unvalidated): the owner of
        the conversation's partition when it is partitioned and names one, else
        :attr:`subject` (any replica; also the fallback when no replica owns it now)."""
        if self.partitioned and isinstance(data, dict):
            cid = data.get("conversationId")
            if isinstance(cid, str) and cid:
                return subjects.partition_query(self.subject, partition_of(cid))
        return self.subject


QUERY_ROUTES: list[QueryRoute] = [
    QueryRoute(
        subjects.QUERY_CONVERSATIONS_LIST,
        _C,
        "query.conversations.list",
        "My conversations",
        ListConversationsQuery,
    ),
    QueryRoute(
        subjects.QUERY_CONVERSATION_GET,
        _C,
        "query.conversation.get",
        "One conversation",
        GetConversationQuery,
        partitioned=True,
    ),
    QueryRoute(
        subjects.QUERY_MESSAGES_LIST,
        _C,
        "query.messages.list",
        "Messages by seq",
        ListMessagesQuery,
        partitioned=True,
    ),
    # internal.EventsSinceRequest
    QueryRoute(
        subjects.QUERY_EVENTS_SINCE, _C, "query.events.since", "Durable events since a seq", None
    ),
    QueryRoute(subjects.QUERY_SEARCH, _C, "query.search", "Search my conversations", SearchQuery),
    QueryRoute(
        subjects.ATTACHMENT_REGISTER,
        _C,
        "attachment.register",
        "Record an upload",
        attachments.RegisterRequest,
    ),
    QueryRoute(
        subjects.QUERY_ATTACHMENT_GET,
        _C,
        "query.attachment.get",
        "May one read a file",
        attachments.GetRequest,
    ),
    # Resumed sessions rejoining one conversation, many principals at once:
    # internal.RejoinRequest.
    QueryRoute(REJOIN_SUBJECT, _C, "conversation.rejoin", "Batched rejoin", None),
]


def query_routes_of(service: Service) -> list[QueryRoute]:
    return [r for r in QUERY_ROUTES if r.service is service]


QUERY_ROUTE: dict[str, QueryRoute] = {r.subject: r for r in QUERY_ROUTES}


def route_of(name: object) -> Route | None:
    """The route of a client-supplied event name, or None if it names no command."""
    if not isinstance(name, str):
        return None
    try:
        return ROUTES.get(Event(name))
    except ValueError:
        return None


# Every subject a command may arrive on → its route (plain and per partition).
_BY_SUBJECT: dict[str, Route] = {r.subject: r for r in ROUTES.values()} | {
    subjects.partition_command(r.event, n): r
    for r in ROUTES.values()
    if r.partitioned
    for n in range(PARTITIONS)
}


def route_of_subject(subject: str) -> Route | None:
    """The route a command subject (plain or a partition's) belongs to."""
    return _BY_SUBJECT.get(subject)


# Every partition's subject of a partitioned query → its route.
_QUERY_BY_SUBJECT: dict[str, QueryRoute] = {
    subjects.partition_query(r.subject, n): r
    for r in QUERY_ROUTES
    if r.partitioned
    for n in range(PARTITIONS)
}


def query_route_of_subject(subject: str) -> QueryRoute | None:
    """The query route a partition's query subject belongs to (None: not one)."""
    return _QUERY_BY_SUBJECT.get(subject)


def routes_of(service: Service) -> list[Route]:
    return [r for r in ROUTES.values() if r.service is service]


def parse_payload(event: Event, data: Any) -> CommandData:
    """Validate a command's ``data``; raises ParleyError(VALIDATION_ERROR)."""
    model = ROUTES[event].payload
    if not isinstance(data, dict):
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, "data must be a JSON object", {"field": "data"}
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
