"""Payloads (``data``) of the client → server commands.

Shared by the gateway (shape check before anything crosses NATS) and the conversation service
(the authority). Unknown fields are refused so a typo is a VALIDATION_ERROR, not silence.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from parley_contract.attachments import AttachmentRef
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.ids import SafeId
from parley_contract.limits import (
    INT64_MAX,
    MAX_CONTENT_CHARS,
    MAX_TITLE_CHARS,
    Content,
    check_free_form,
    check_value,
)
from parley_contract.models import (
    ConversationContext,
    ConversationStatus,
    MessageStatus,
    MessageType,
    ParticipantRole,
    Role,
    Thinking,
    ToolCall,
    ToolResult,
    Usage,
)

DEFAULT_TITLE = "New conversation"  # a conversation created without a title


# Free-form values (metadata, tool arguments): storable, bounded in depth and size (limits).
FreeForm = Annotated[dict[str, Any], BeforeValidator(check_free_form)]


class CommandData(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """Every value of the raw data storable (64-bit integers, finite numbers, keys the
        store accepts, bounded nesting) before any field is looked at: see limits."""
        check_value(data)
        return data


class InConversation(CommandData):
    conversation_id: SafeId


class ParticipantRef(CommandData):
    """A participant as the seed's Conversation writes it, ``{userId | agentId, role}``
    (``joinedAt``/``leftAt`` are the server's), or Parley's older ``{id, kind, role}``.
    A bare id (a string) is the shorthand for ``{userId: id}``."""

    user_id: SafeId | None = None
    agent_id: SafeId | None = None
    id: SafeId | None = None
    kind: str | None = Field(default=None, pattern="^(user|agent)$")
    role: ParticipantRole | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # A bare id: one model instead of a union, so errors name the real field
        # (participants.0.userId), not a union branch.
        return {"userId": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_principal(self) -> ParticipantRef:
        given = [x for x in (self.user_id, self.agent_id, self.id) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of userId or agentId")
        if self.kind is not None and self.id is None:
            raise ValueError("kind goes with id; use userId or agentId")
        return self

    @property
    def principal_id(self) -> str:
        return self.user_id or self.agent_id or self.id or ""

    @property
    def is_agent(self) -> bool:
        return self.agent_id is not None or self.kind == "agent"


# A participant in a command: the seed's object or a bare user id (read as {userId: id}).
ParticipantIn = ParticipantRef


def participant_id(ref: ParticipantIn) -> str:
    return ref.principal_id


class ConversationCreate(CommandData):
    conversation_id: SafeId | None = None  # optional client-chosen id
    title: str = Field(default=DEFAULT_TITLE, max_length=MAX_TITLE_CHARS)
    description: str = Field(default="", max_length=2000)
    agent_id: SafeId | None = None
    model_id: str | None = Field(default=None, max_length=200)
    conversation_type: str = Field(default="chat", max_length=50)
    status: ConversationStatus = ConversationStatus.ACTIVE
    participants: list[ParticipantIn] = Field(default_factory=list, max_length=500)
    tags: list[str] = Field(default_factory=list, max_length=50)
    context: ConversationContext | None = None


class ConversationJoin(InConversation):
    since_seq: int | None = Field(default=None, ge=0, le=INT64_MAX)


class ConversationLeave(InConversation):
    pass


class ConversationDelete(InConversation):
    pass


class ConversationUpdate(InConversation):
    title: str | None = Field(default=None, max_length=MAX_TITLE_CHARS)
    description: str | None = Field(default=None, max_length=2000)
    status: ConversationStatus | None = None
    tags: list[str] | None = Field(default=None, max_length=50)
    agent_id: SafeId | None = None
    model_id: str | None = Field(default=None, max_length=200)
    context: ConversationContext | None = None
    # The seed's way: the whole list (entries missing from it get leftAt, new ones join).
    participants: list[ParticipantIn] | None = Field(default=None, max_length=500)
    add_participants: list[ParticipantIn] | None = Field(default=None, max_length=500)
    remove_participants: list[ParticipantIn] | None = Field(default=None, max_length=500)
    # Agents and services only: the model call that produced this update (the agent bridge's
    # automatic title or context), added to the conversation's totals like a message's.
    usage: Usage | None = None
    cost: float | None = Field(default=None, ge=0)


class MessageSend(InConversation):
    content: Content = ""
    client_message_id: str | None = Field(default=None, min_length=1, max_length=128)
    role: Role | None = None  # defaults from the principal's kind
    # The seed's Message fields a client may write as in the samples: agentId (null, or an
    # agent's own id) and messageStatus (the client's copy; the stored one is "sent").
    agent_id: SafeId | None = None
    message_status: MessageStatus | None = None
    message_type: MessageType = MessageType.TEXT
    name: str | None = Field(default=None, max_length=200)
    parent_message_id: str | None = Field(default=None, max_length=128)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=64)
    tool_results: list[ToolResult] | None = Field(default=None, max_length=64)
    thinking: Thinking | None = None
    usage: Usage | None = None
    latency: float | None = Field(default=None, ge=0)
    error: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS)
    # Uploaded attachments by id ({id} or the seed's whole object; only id is read).
    attachments: list[AttachmentRef] | None = Field(default=None, max_length=32)
    metadata: FreeForm | None = None
    finish_reason: str | None = Field(default=None, max_length=32)
    cost: float | None = Field(default=None, ge=0)  # USD; agents and services only

    @field_validator("tool_results", mode="before")
    @classmethod
    def _bounded_results(cls, value: Any) -> Any:
        """Each tool result's ``result`` is free-form (limits.check_free_form)."""
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and "result" in item:
                    try:
                        check_free_form(item["result"])
                    except PydanticCustomError as exc:
                        ctx = exc.context or {}
                        sub = ".".join(p for p in (str(i), "result", ctx.get("path", "")) if p)
                        raise PydanticCustomError(
                            exc.type, exc.message_template, {**ctx, "path": sub}
                        ) from None
        return value


class MessageEdit(InConversation):
    message_id: str = Field(min_length=1, max_length=128)
    content: Content


class MessageDelete(InConversation):
    message_id: str = Field(min_length=1, max_length=128)


class MessageReact(InConversation):
    message_id: str = Field(min_length=1, max_length=128)
    emoji: str = Field(min_length=1, max_length=32)
    remove: bool = False


class MessageStop(InConversation):
    pass


class Typing(InConversation):
    pass


class ConversationRead(InConversation):
    """Read up to ``seq`` (a durable event's seq, at most the conversation's last)."""

    seq: StrictInt = Field(ge=0, le=INT64_MAX)


class Presence(CommandData):
    status: str | None = Field(default=None, max_length=100)


class ToolCallCommand(CommandData):
    conversation_id: SafeId | None = None
    tool_name: str = Field(min_length=1, max_length=200)
    arguments: FreeForm = Field(default_factory=dict)
    agent_id: SafeId | None = None


class TaskCreate(InConversation):
    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    description: str = Field(default="", max_length=MAX_CONTENT_CHARS)
    agent_id: SafeId | None = None


def validation_error(exc: ValidationError, *, under: str | None = None) -> ParleyError:
    """A pydantic error as a VALIDATION_ERROR a client author can act on (PAYLOAD_TOO_LARGE
    for a content over its limit). ``under``: the name of the field the client's data sits
    in (a request's ``data``), left out of the field paths the client sees."""
    errors = exc.errors()
    first = errors[0]
    field = _field_of(first, under) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "payload_too_large":
        limit = (first.get("ctx") or {}).get("limit")
        return ParleyError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"{field or 'value'} is {msg}",
            {"field": field, "limit": limit} if field else {"limit": limit},
        )
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    details: dict[str, Any] = {
        "errors": [{"field": _field_of(e, under), "message": e.get("msg", "")} for e in errors[:10]]
    }
    if field:
        details["field"] = field
    return ParleyError(ErrorCode.VALIDATION_ERROR, f"{field}: {msg}" if field else msg, details)


def _field_of(error: Any, under: str | None = None) -> str:
    """The dotted path of a pydantic error, with the sub-path a limits check puts in ctx."""
    parts = [str(p) for p in error.get("loc", ())]
    sub = (error.get("ctx") or {}).get("path")
    if isinstance(sub, str) and sub:
        parts.append(sub)
    if under is not None and parts[:1] == [under] and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts)
