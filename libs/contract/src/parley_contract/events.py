"""The one registry of Parley's WebSocket event names.

Every event name used anywhere in Parley is a member of :class:`Event`; no other module spells
an event string. Each event carries its direction (client→server command or server→client
event), who may send it (an allow-list of principal kinds, as Synapse does for its
federation senders) and whether it belongs to a conversation's durable history (gets a
``seq``) or is ephemeral.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PrincipalKind(enum.StrEnum):
    """Who stands behind a connection or a request."""

    USER = "user"
    AGENT = "agent"
    # Parley's own services (conversation service, agent bridge); never a WebSocket client.
    SERVICE = "service"


class Direction(enum.StrEnum):
    COMMAND = "command"  # client → server
    EVENT = "event"  # server → client


class Durability(enum.StrEnum):
    DURABLE = "durable"  # stored, carries a per-conversation seq, replayed on resume
    EPHEMERAL = "ephemeral"  # never stored, no seq, not replayed
    SESSION = "session"  # about the connection itself (connected, error...)


class Event(enum.StrEnum):
    # Client → server commands (design doc 2.2, docs/protocol.md 3)
    CONVERSATION_CREATE = "conversation:create"
    CONVERSATION_JOIN = "conversation:join"
    CONVERSATION_LEAVE = "conversation:leave"
    CONVERSATION_UPDATE = "conversation:update"
    CONVERSATION_DELETE = (
        "conversation:delete"  # Parley addition (naming rule: <resource>:<action>)
    )
    MESSAGE_SEND = "message:send"
    MESSAGE_EDIT = "message:edit"
    MESSAGE_DELETE = "message:delete"
    MESSAGE_REACT = "message:react"
    MESSAGE_STOP = "message:stop"  # Parley addition: cancel a running agent turn
    TYPING_START = "typing:start"  # both directions
    TYPING_STOP = "typing:stop"  # both directions
    PRESENCE_ONLINE = "presence:online"  # both directions
    PRESENCE_OFFLINE = "presence:offline"  # both directions
    TOOL_CALL = "tool:call"
    TASK_CREATE = "task:create"
    # Parley addition (issue 17): the caller has read up to a seq; also the event that tells
    # the other members ("seen by") and the reader's other connections (unread counts).
    CONVERSATION_READ = "conversation:read"  # both directions

    # Server → client events
    CONNECTED = "connected"
    RECONNECTED = "reconnected"
    ERROR = "error"
    CONVERSATION_CREATED = "conversation:created"
    CONVERSATION_JOINED = "conversation:joined"
    CONVERSATION_UPDATED = "conversation:updated"
    CONVERSATION_DELETED = "conversation:deleted"
    MESSAGE_NEW = "message:new"
    MESSAGE_UPDATED = "message:updated"
    MESSAGE_DELETED = "message:deleted"
    MESSAGE_REACTED = "message:reacted"
    AGENT_THINKING = "agent:thinking"
    AGENT_TOOL_CALLING = "agent:tool-calling"
    AGENT_ONLINE = "agent:online"
    AGENT_OFFLINE = "agent:offline"
    # Parley additions (docs/protocol.md 3 and 5: token streaming; tasks)
    MESSAGE_STREAM_START = "message:stream-start"
    MESSAGE_STREAM_DELTA = "message:stream-delta"
    MESSAGE_STREAM_END = "message:stream-end"
    TASK_CREATED = "task:created"
    TOOL_RESULT = "tool:result"
    # Parley additions (issue 17): delivery receipts and unread counts of unwatched lists.
    MESSAGE_DELIVERED = "message:delivered"
    CONVERSATION_ACTIVITY = "conversation:activity"


@dataclass(frozen=True, slots=True)
class EventSpec:
    event: Event
    directions: frozenset[Direction]
    durability: Durability
    # Principal kinds allowed to send this as a command; empty for server-only events.
    senders: frozenset[PrincipalKind]
    summary: str


_U = PrincipalKind.USER
_A = PrincipalKind.AGENT
_S = PrincipalKind.SERVICE
_CMD = frozenset({Direction.COMMAND})
_EVT = frozenset({Direction.EVENT})
_BOTH = frozenset({Direction.COMMAND, Direction.EVENT})
_ALL = frozenset({_U, _A, _S})


def _spec(
    event: Event,
    directions: frozenset[Direction],
    durability: Durability,
    senders: frozenset[PrincipalKind],
    summary: str,
) -> EventSpec:
    return EventSpec(event, directions, durability, senders, summary)


_D = Durability.DURABLE
_E = Durability.EPHEMERAL
_X = Durability.SESSION
_NONE: frozenset[PrincipalKind] = frozenset()

REGISTRY: dict[Event, EventSpec] = {
    s.event: s
    for s in [
        _spec(Event.CONVERSATION_CREATE, _CMD, _X, _ALL, "create a conversation"),
        _spec(
            Event.CONVERSATION_JOIN,
            _CMD,
            _X,
            _ALL,
            "watch a conversation (subscribe this connection), optionally since a seq",
        ),
        _spec(
            Event.CONVERSATION_LEAVE,
            _CMD,
            _X,
            _ALL,
            "stop watching (unsubscribe this connection); participation unchanged",
        ),
        _spec(Event.CONVERSATION_UPDATE, _CMD, _X, _ALL, "change title, status, tags, agent..."),
        _spec(
            Event.CONVERSATION_DELETE,
            _CMD,
            _X,
            _ALL,
            "soft-delete a conversation (its creator only)",
        ),
        _spec(Event.MESSAGE_SEND, _CMD, _X, _ALL, "post a message"),
        _spec(Event.MESSAGE_EDIT, _CMD, _X, _ALL, "edit one's own message"),
        _spec(Event.MESSAGE_DELETE, _CMD, _X, _ALL, "soft-delete one's own message"),
        _spec(Event.MESSAGE_REACT, _CMD, _X, _ALL, "add or remove a reaction"),
        _spec(Event.MESSAGE_STOP, _CMD, _X, frozenset({_U, _S}), "cancel the running agent turn"),
        _spec(Event.TYPING_START, _BOTH, _E, _ALL, "someone started typing"),
        _spec(Event.TYPING_STOP, _BOTH, _E, _ALL, "someone stopped typing"),
        _spec(Event.PRESENCE_ONLINE, _BOTH, _E, _ALL, "a principal is online"),
        _spec(Event.PRESENCE_OFFLINE, _BOTH, _E, _ALL, "a principal went offline"),
        _spec(Event.TOOL_CALL, _CMD, _X, frozenset({_A, _S}), "ask the platform to run a tool"),
        _spec(Event.TASK_CREATE, _CMD, _X, _ALL, "record a task for an agent"),
        _spec(
            Event.CONVERSATION_READ,
            _BOTH,
            _E,
            frozenset({_U, _A}),
            "read cursors: the caller read up to a seq; who read how far (coalesced)",
        ),
        _spec(Event.CONNECTED, _EVT, _X, _NONE, "first frame of a new session"),
        _spec(Event.RECONNECTED, _EVT, _X, _NONE, "first frame of a resumed session"),
        _spec(Event.ERROR, _EVT, _X, _NONE, "a failure that belongs to no command id"),
        _spec(Event.CONVERSATION_CREATED, _EVT, _D, _NONE, "a conversation was created"),
        _spec(Event.CONVERSATION_JOINED, _EVT, _X, _NONE, "join succeeded"),
        _spec(
            Event.CONVERSATION_UPDATED,
            _EVT,
            _D,
            _NONE,
            "conversation metadata or participants changed",
        ),
        _spec(Event.CONVERSATION_DELETED, _EVT, _D, _NONE, "a conversation was deleted"),
        _spec(Event.MESSAGE_NEW, _EVT, _D, _NONE, "a stored message"),
        _spec(Event.MESSAGE_UPDATED, _EVT, _D, _NONE, "a message was edited"),
        _spec(Event.MESSAGE_DELETED, _EVT, _D, _NONE, "a message was soft-deleted"),
        _spec(Event.MESSAGE_REACTED, _EVT, _D, _NONE, "a message's reactions changed"),
        _spec(Event.AGENT_THINKING, _EVT, _E, _NONE, "the agent is processing"),
        _spec(Event.AGENT_TOOL_CALLING, _EVT, _E, _NONE, "the agent is calling a tool"),
        _spec(Event.AGENT_ONLINE, _EVT, _E, _NONE, "an agent can answer"),
        _spec(Event.AGENT_OFFLINE, _EVT, _E, _NONE, "an agent can no longer answer"),
        _spec(Event.MESSAGE_STREAM_START, _EVT, _E, _NONE, "an agent answer starts streaming"),
        _spec(Event.MESSAGE_STREAM_DELTA, _EVT, _E, _NONE, "a chunk of a streaming answer"),
        _spec(Event.MESSAGE_STREAM_END, _EVT, _E, _NONE, "the stream ended; message:new follows"),
        _spec(Event.TASK_CREATED, _EVT, _D, _NONE, "a task was recorded"),
        _spec(Event.TOOL_RESULT, _EVT, _E, _NONE, "result of a tool:call"),
        _spec(
            Event.MESSAGE_DELIVERED,
            _EVT,
            _E,
            _NONE,
            "messages reached another member's connection (coalesced)",
        ),
        _spec(
            Event.CONVERSATION_ACTIVITY,
            _EVT,
            _E,
            _NONE,
            "new messages in one of the caller's conversations (to the principal, coalesced)",
        ),
    ]
}

assert set(REGISTRY) == set(Event), "every Event needs a spec"

COMMANDS: frozenset[Event] = frozenset(
    e for e, s in REGISTRY.items() if Direction.COMMAND in s.directions
)
SERVER_EVENTS: frozenset[Event] = frozenset(
    e for e, s in REGISTRY.items() if Direction.EVENT in s.directions
)
DURABLE_EVENTS: frozenset[Event] = frozenset(
    e for e, s in REGISTRY.items() if s.durability is Durability.DURABLE
)
EPHEMERAL_EVENTS: frozenset[Event] = frozenset(
    e for e, s in REGISTRY.items() if s.durability is Durability.EPHEMERAL
)


def parse_command(name: object) -> Event | None:
    """The command for a client-supplied event name, or None if it is not a command."""
    if not isinstance(name, str):
        return None
    try:
        event = Event(name)
    except ValueError:
        return None
    return event if event in COMMANDS else None


def may_send(kind: PrincipalKind, event: Event) -> bool:
    """Whether a principal of this kind may send this command (the allow-list)."""
    return kind in REGISTRY[event].senders
