"""Data shapes of the server → client events that had no model (docs/protocol.md 1 and 3.5).

The gateway and the conversation service build these frames as plain dicts; the models
document them for the generated clients (``wire_schema``: TypeScript, AsyncAPI) and give the
Python client (``libs/client``) typed events. Unknown fields are ignored, not refused, so a
client built from them keeps working when the server adds one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Conversation


class _Data(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ResumedConversation(_Data):
    """One conversation a ``reconnected`` session restored, and the seq it resumed after."""

    conversation_id: str
    last_seq: int


class ConnectedData(_Data):
    """``connected`` / ``reconnected``: the session (section 1)."""

    session_id: str
    principal: Principal
    instance_id: str
    heartbeat_seconds: float
    session_ttl_seconds: float
    # maxFrameBytes, maxContentChars, commandsPerSecond, maxConversations, sendQueueBytes...
    limits: dict[str, float] = {}
    # ``reconnected`` only.
    conversations: list[ResumedConversation] | None = None
    # ``reconnected`` only, issue 19: what could not be read, e.g. ``["sessions"]`` (the
    # session store was unavailable: restored from the client's ``since`` alone).
    degraded: list[str] | None = None


class MemberCursor(_Data):
    """How far one member has read a conversation (docs/protocol.md 3.6)."""

    principal_id: str
    kind: PrincipalKind
    read_seq: int = 0


class Cursor(_Data):
    """A read or delivery cursor that moved: ``(kind, principalId)`` is at ``seq``."""

    principal_id: str
    kind: PrincipalKind
    seq: int


class ReadData(_Data):
    """``conversation:read``: read cursors that moved (coalesced per conversation). To the
    reader's own connections also its ``unreadCount``."""

    conversation_id: str
    cursors: list[Cursor]
    unread_count: int | None = None


class DeliveredData(_Data):
    """``message:delivered``: principals whose reception delivered messages (coalesced)."""

    conversation_id: str
    cursors: list[Cursor]


class ActivityMessage(_Data):
    message_id: str
    role: str
    message_type: str
    content: str
    created_by: str | None = None
    seq: int


class ActivityData(_Data):
    """``conversation:activity``: new messages in one of the principal's conversations."""

    conversation_id: str
    last_seq: int
    last_message: ActivityMessage


class ReadReply(_Data):
    """The reply to ``conversation:read``: where the cursor is and what is still unread."""

    conversation_id: str
    seq: int
    unread_count: int


class ConversationJoinedData(_Data):
    """``conversation:joined`` (event and the join's reply): where the stream starts."""

    conversation: Conversation | None = None
    last_seq: int
    since_seq: int | None = None
    epoch: int = 0
    # The reply only: the last seq this connection was given (the replay goes up from here).
    delivered_seq: int | None = None
    # The event (3.6): the caller's unread count and read cursor, the members' read cursors.
    unread_count: int | None = None
    read_seq: int | None = None
    cursors: list[MemberCursor] | None = None


class TypingData(_Data):
    """``typing:start`` / ``typing:stop`` from another connection."""

    conversation_id: str
    principal_id: str
    kind: PrincipalKind
    name: str | None = None


class PresenceData(TypingData):
    """``presence:online`` / ``presence:offline`` (and ``agent:*`` from a gateway)."""

    status: str | None = None
    reason: str | None = None  # "instance-lost" when a crashed gateway's clients are reaped


class Task(_Data):
    """``task:created`` and the reply to ``task:create``."""

    id: str
    conversation_id: str
    title: str
    description: str = ""
    agent_id: str | None = None
    status: str = "pending"
    created_by: str | None = None
    created_at: str | None = None
    updated_at: str | None = None

    model_config = ConfigDict(
        alias_generator=lambda name: "_id" if name == "id" else to_camel(name),
        populate_by_name=True,
    )


class StopReply(_Data):
    """The reply to ``message:stop``."""

    stopping: bool


class LeaveReply(_Data):
    """The reply to ``conversation:leave``: this connection stopped watching."""

    conversation_id: str
    watching: bool = False


class PresenceReply(_Data):
    """The reply to ``presence:online`` / ``presence:offline``."""

    conversations: int  # joined conversations the status was sent to


class ToolCallReply(_Data):
    """The reply to ``tool:call``."""

    tool_name: str
    result: Any = None
    success: bool
    error: str | None = None
    execution_time: float | None = None  # ms
