"""Pydantic v2 models of Conversation and Message (design doc 3.1 and 3.2).

On the wire: camelCase field names, ``_id`` as in the samples, timestamps ISO-8601 UTC with a
trailing ``Z``. Serialize with :func:`parley_contract.jsonutil.model_json` (aliases, unset
fields left out) so that every sample of ``seed/sample-messages.jsonl`` round-trips unchanged.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from parley_contract.events import PrincipalKind
from parley_contract.timeutil import iso

# Every timestamp on the wire as the frames write theirs: UTC, trailing Z, milliseconds.
Timestamp = Annotated[AwareDatetime, PlainSerializer(iso, return_type=str, when_used="json")]


class WireModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        ser_json_timedelta="float",
    )


class BaseDocument(WireModel):
    """The design's BaseSchema fields shared by conversations and messages."""

    created_by: str | None = None
    updated_by: str | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    is_active: bool = True


# ---------------------------------------------------------------- Conversation


class ConversationStatus(enum.StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"
    CLOSED = "closed"


class ParticipantRole(enum.StrEnum):
    USER = "user"
    AGENT = "agent"
    OBSERVER = "observer"


class Participant(WireModel):
    user_id: str | None = None
    agent_id: str | None = None
    role: ParticipantRole
    joined_at: Timestamp
    left_at: Timestamp | None = None
    # Parley: the display name from the directory (replies only, never stored; 3.6).
    name: str | None = None

    @property
    def principal_id(self) -> str:
        return self.user_id or self.agent_id or ""

    @property
    def kind(self) -> PrincipalKind:
        """A participant is a user (``userId``) or an agent (``agentId``), never both."""
        return PrincipalKind.USER if self.user_id else PrincipalKind.AGENT

    @property
    def principal(self) -> tuple[PrincipalKind, str]:
        """``(kind, id)``: the user ``x`` and the agent ``x`` are two principals."""
        return self.kind, self.principal_id

    def is_principal(self, kind: PrincipalKind, principal_id: str) -> bool:
        return self.principal == (kind, principal_id)

    @property
    def active(self) -> bool:
        return self.left_at is None


class LastMessage(WireModel):
    content: str
    role: str
    created_at: Timestamp
    # Parley additions so a list view can link and order without another fetch.
    message_id: str | None = None
    message_type: str | None = None
    seq: int | None = None


class ConversationContext(WireModel):
    summary: str | None = None
    entities: list[str] | None = None
    topics: list[str] | None = None
    sentiment: str | None = None
    # Parley: the conversation's totalMessages when this context was written; the agent
    # bridge refreshes it once N more messages are in (the agent's context_every_messages).
    message_count: int | None = Field(default=None, ge=0)


class TitleSource(enum.StrEnum):
    """Who wrote a conversation's title (``Conversation.titleSource``)."""

    USER = "user"  # a person or service: create with a title, or conversation:update; kept
    AGENT = "agent"  # an agent: the agent bridge's automatic title (a later one may replace it)


class Conversation(BaseDocument):
    id: str = Field(alias="_id")
    conversation_id: str
    title: str
    description: str = ""
    agent_id: str | None = None
    model_id: str | None = None
    conversation_type: str = "chat"
    status: ConversationStatus = ConversationStatus.ACTIVE
    total_tokens: int = 0
    total_messages: int = 0
    total_cost: float = 0.0
    participants: list[Participant] = Field(default_factory=list)
    last_message: LastMessage | None = None
    tags: list[str] = Field(default_factory=list)
    context: ConversationContext | None = None
    # Parley: the seq of the latest durable event (what a resuming client compares with).
    last_seq: int = 0
    # Parley: set when the conversation was deleted (soft: isActive false, kept in the store).
    deleted_at: Timestamp | None = None
    # Parley: who wrote the title; absent while it is the default one. An agent's title never
    # replaces a user's (nor, for a conversation older than this field, a non-default title).
    title_source: TitleSource | None = None
    # Parley, in GET replies only (never stored): the caller's unread count and read seq.
    unread_count: int | None = None
    read_seq: int | None = None


# ---------------------------------------------------------------- Message


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class MessageType(enum.StrEnum):
    TEXT = "text"
    THINKING = "thinking"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    ERROR = "error"
    SYSTEM = "system"


class MessageStatus(enum.StrEnum):
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


class ToolFunction(WireModel):
    name: str
    arguments: str  # a JSON string, as in OpenAI's tool calls


class ToolCall(WireModel):
    id: str
    type: str = "mcp_tool"  # 'function' | 'mcp_tool'
    function: ToolFunction


class ToolResult(WireModel):
    tool_call_id: str
    tool_name: str
    result: Any = None
    success: bool
    error: str | None = None
    execution_time: float | None = None  # ms


class Thinking(WireModel):
    content: str
    visible: bool = True
    duration: float = 0  # ms


class Usage(WireModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class Attachment(WireModel):
    id: str
    filename: str
    mime_type: str
    size: int = Field(ge=0)
    url: str


class Message(BaseDocument):
    id: str = Field(alias="_id")
    conversation_id: str
    agent_id: str | None = None
    role: Role
    content: str
    message_type: MessageType = MessageType.TEXT
    name: str | None = None
    parent_message_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_results: list[ToolResult] | None = None
    thinking: Thinking | None = None
    usage: Usage | None = None
    latency: float | None = None  # ms
    error: str | None = None
    message_status: MessageStatus | None = None
    attachments: list[Attachment] | None = None
    metadata: dict[str, Any] | None = None
    # Parley additions.
    seq: int | None = None  # seq of the message:new event that announced it
    client_message_id: str | None = None
    reactions: dict[str, list[str]] | None = None  # emoji → principal ids
    cost: float | None = None  # USD, for agent messages with usage
    finish_reason: str | None = None  # 'stop' | 'tool_calls' | 'aborted' | 'error' | ...
    edited_at: Timestamp | None = None
    deleted_at: Timestamp | None = None
