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
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.ids import SafeId
from parley_contract.limits import INT64_MAX, check_free_form, check_value
from parley_contract.models import (
    Attachment,
    ConversationContext,
    ConversationStatus,
    MessageType,
    Role,
    Thinking,
    ToolCall,
    ToolResult,
    Usage,
)

# Defaults; the gateway announces its configured values in connected.limits.
MAX_CONTENT_CHARS = 32_000
MAX_TITLE_CHARS = 200


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
    id: SafeId
    kind: str = Field(default="user", pattern="^(user|agent)$")
    role: str | None = Field(default=None, pattern="^(user|agent|observer)$")


class ConversationCreate(CommandData):
    conversation_id: SafeId | None = None  # optional client-chosen id
    title: str = Field(default="New conversation", max_length=MAX_TITLE_CHARS)
    description: str = Field(default="", max_length=2000)
    agent_id: SafeId | None = None
    model_id: str | None = Field(default=None, max_length=200)
    conversation_type: str = Field(default="chat", max_length=50)
    participants: list[SafeId | ParticipantRef] = Field(default_factory=list, max_length=500)
    tags: list[str] = Field(default_factory=list, max_length=50)
    context: ConversationContext | None = None


class ConversationJoin(InConversation):
    since_seq: int | None = Field(default=None, ge=0, le=INT64_MAX)


class ConversationLeave(InConversation):
    pass


class ConversationUpdate(InConversation):
    title: str | None = Field(default=None, max_length=MAX_TITLE_CHARS)
    description: str | None = Field(default=None, max_length=2000)
    status: ConversationStatus | None = None
    tags: list[str] | None = Field(default=None, max_length=50)
    agent_id: SafeId | None = None
    model_id: str | None = Field(default=None, max_length=200)
    context: ConversationContext | None = None
    add_participants: list[SafeId | ParticipantRef] | None = Field(default=None, max_length=500)
    remove_participants: list[SafeId] | None = Field(default=None, max_length=500)


class MessageSend(InConversation):
    content: str = Field(default="", max_length=MAX_CONTENT_CHARS)
    client_message_id: str | None = Field(default=None, min_length=1, max_length=128)
    role: Role | None = None  # defaults from the principal's kind
    message_type: MessageType = MessageType.TEXT
    name: str | None = Field(default=None, max_length=200)
    parent_message_id: str | None = Field(default=None, max_length=128)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=64)
    tool_results: list[ToolResult] | None = Field(default=None, max_length=64)
    thinking: Thinking | None = None
    usage: Usage | None = None
    latency: float | None = Field(default=None, ge=0)
    error: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS)
    attachments: list[Attachment] | None = Field(default=None, max_length=32)
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
    content: str = Field(max_length=MAX_CONTENT_CHARS)


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


PAYLOADS: dict[Event, type[CommandData]] = {
    Event.CONVERSATION_CREATE: ConversationCreate,
    Event.CONVERSATION_JOIN: ConversationJoin,
    Event.CONVERSATION_LEAVE: ConversationLeave,
    Event.CONVERSATION_UPDATE: ConversationUpdate,
    Event.MESSAGE_SEND: MessageSend,
    Event.MESSAGE_EDIT: MessageEdit,
    Event.MESSAGE_DELETE: MessageDelete,
    Event.MESSAGE_REACT: MessageReact,
    Event.MESSAGE_STOP: MessageStop,
    Event.TYPING_START: Typing,
    Event.TYPING_STOP: Typing,
    Event.PRESENCE_ONLINE: Presence,
    Event.PRESENCE_OFFLINE: Presence,
    Event.TOOL_CALL: ToolCallCommand,
    Event.TASK_CREATE: TaskCreate,
}


def validation_error(exc: ValidationError) -> ParleyError:
    """A pydantic error as a VALIDATION_ERROR a client author can act on."""
    errors = exc.errors()
    first = errors[0]
    field = _field_of(first) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    details: dict[str, Any] = {
        "errors": [{"field": _field_of(e), "message": e.get("msg", "")} for e in errors[:10]]
    }
    if field:
        details["field"] = field
    return ParleyError(ErrorCode.VALIDATION_ERROR, f"{field}: {msg}" if field else msg, details)


def _field_of(error: Any) -> str:
    """The dotted path of a pydantic error, with the sub-path a limits check puts in ctx."""
    parts = [str(p) for p in error.get("loc", ())]
    sub = (error.get("ctx") or {}).get("path")
    if isinstance(sub, str) and sub:
        parts.append(sub)
    return ".".join(parts)


def parse_payload(event: Event, data: Any) -> CommandData:
    """Validate a command's ``data``; raises ParleyError(VALIDATION_ERROR)."""
    model = PAYLOADS[event]
    if not isinstance(data, dict):
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, "data must be a JSON object", {"field": "data"}
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
