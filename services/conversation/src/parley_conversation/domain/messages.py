"""Messages: role rules, construction, edits and deletes, and what a batch adds to its
conversation's totals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parley_contract.commands import MessageSend
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.ids import new_id
from parley_contract.internal import Principal
from parley_contract.models import LastMessage, Message, MessageStatus, MessageType, Role
from parley_conversation.domain.access import is_author
from parley_conversation.domain.checks import check_keys
from parley_conversation.domain.clock import now_ms
from parley_conversation.domain.delivered import Mark

# Fields only agents and services may set on a message (users may not: FORBIDDEN).
AGENT_ONLY_FIELDS: tuple[str, ...] = (
    "agent_id",
    "usage",
    "latency",
    "cost",
    "thinking",
    "tool_calls",
    "tool_results",
    "finish_reason",
    "error",
)
# Which message types each role may carry.
ROLE_TYPES: dict[Role, frozenset[MessageType]] = {
    Role.USER: frozenset({MessageType.TEXT}),
    Role.ASSISTANT: frozenset(
        {MessageType.TEXT, MessageType.THINKING, MessageType.TOOL_CALL, MessageType.ERROR}
    ),
    Role.TOOL: frozenset({MessageType.TOOL_RESULT}),
    Role.SYSTEM: frozenset({MessageType.SYSTEM, MessageType.TEXT, MessageType.ERROR}),
}
LAST_MESSAGE_PREVIEW_CHARS = 500
# The fields of a message:send copied to the message as given (when not null).
_COPIED_FIELDS = frozenset(
    (
        "name",
        "parent_message_id",
        "tool_calls",
        "tool_results",
        "thinking",
        "usage",
        "latency",
        "error",
        "metadata",
        "finish_reason",
        "cost",
        "client_message_id",
    )
)


def resolve_role(principal: Principal, cmd: MessageSend) -> tuple[Role, MessageType]:
    """Role and type of a message by this principal; FORBIDDEN for a role it lacks."""
    fields = cmd.model_fields_set
    mtype = cmd.message_type
    if principal.kind is PrincipalKind.USER:
        if cmd.role not in (None, Role.USER):
            raise ParleyError(
                ErrorCode.FORBIDDEN,
                f"a user may not send messages with role '{cmd.role}'",
                {"field": "role"},
            )
        for name in AGENT_ONLY_FIELDS:
            if name in fields and getattr(cmd, name) is not None:
                raise ParleyError(
                    ErrorCode.FORBIDDEN,
                    f"only agents may set {_camel(name)}",
                    {"field": _camel(name)},
                )
        role = Role.USER
    elif principal.kind is PrincipalKind.AGENT:
        if cmd.agent_id is not None and cmd.agent_id != principal.id:
            raise ParleyError(
                ErrorCode.FORBIDDEN,
                "an agent may only write messages as itself (agentId)",
                {"field": "agentId"},
            )
        if cmd.role is None:
            role = Role.TOOL if mtype is MessageType.TOOL_RESULT else Role.ASSISTANT
        elif cmd.role in (Role.ASSISTANT, Role.TOOL):
            role = cmd.role
        else:
            raise ParleyError(
                ErrorCode.FORBIDDEN,
                f"an agent may not send messages with role '{cmd.role}'",
                {"field": "role"},
            )
    else:
        role = cmd.role or (Role.SYSTEM if mtype in (MessageType.SYSTEM,) else Role.ASSISTANT)
        if cmd.role is None and "message_type" not in fields:
            role, mtype = Role.SYSTEM, MessageType.SYSTEM
    if mtype not in ROLE_TYPES[role]:
        code = ErrorCode.FORBIDDEN if principal.kind is not PrincipalKind.SERVICE else None
        raise ParleyError(
            code or ErrorCode.VALIDATION_ERROR,
            f"messageType '{mtype}' is not allowed for role '{role}'",
            {"field": "messageType"},
        )
    return role, mtype


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def new_message(principal: Principal, cmd: MessageSend, *, agent_id: str | None = None) -> Message:
    """The message to store (without seq) after role and content checks."""
    role, mtype = resolve_role(principal, cmd)
    if cmd.metadata is not None:
        check_keys(cmd.metadata, "metadata")
    for tr in cmd.tool_results or []:
        check_keys(tr.result, "toolResults.result")
    has_body = bool(cmd.content.strip()) or bool(
        cmd.attachments or cmd.tool_calls or cmd.tool_results or cmd.thinking or cmd.error
    )
    if not has_body:
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, "content must not be empty", {"field": "content"}
        )
    at = now_ms()
    msg_agent = cmd.agent_id  # users may not set it (agent-only); agents only their own id
    if role in (Role.ASSISTANT, Role.TOOL):
        msg_agent = principal.id if principal.kind is PrincipalKind.AGENT else msg_agent or agent_id
    data: dict[str, Any] = {
        "_id": new_id("msg"),
        "conversation_id": cmd.conversation_id,
        "role": role,
        "content": cmd.content,
        "message_type": mtype,
        "message_status": MessageStatus.SENT,
        "created_by": principal.id,
        "updated_by": principal.id,
        "created_at": at,
        "updated_at": at,
        "is_active": True,
    }
    if msg_agent:
        data["agent_id"] = msg_agent
    # attachments: ids in the command; the service resolves them (attachments.py) and puts
    # the stored records' seed shape in the message.
    for name in _COPIED_FIELDS.intersection(cmd.model_fields_set):  # unset ones are None
        value = getattr(cmd, name)
        if value is not None:
            data[name] = value
    if principal.kind is not PrincipalKind.SERVICE:
        # Who wrote it comes from the token (its name claim, else the id), never from the
        # client: bob cannot post as "Alice". Services write for others and may name them.
        # A tool result may carry the name of a tool it reports on (OpenAI's tool messages;
        # the seed's cases 5, 12, 14, 16).
        tools = {r.tool_name for r in cmd.tool_results or []}
        if not (role is Role.TOOL and cmd.name in tools):
            data["name"] = principal.name or principal.id
    return Message.model_validate(data)


def last_message_of(msg: Message) -> LastMessage:
    assert msg.created_at is not None
    return LastMessage(
        content=msg.content[:LAST_MESSAGE_PREVIEW_CHARS],
        role=msg.role.value,
        created_at=msg.created_at,
        message_id=msg.id,
        message_type=msg.message_type.value,
        seq=msg.seq,
    )


@dataclass
class Totals:
    """What a batch of stored messages adds to its conversation."""

    messages: int = 0
    tokens: int = 0
    cost: float = 0.0
    last_message: LastMessage | None = None
    max_seq: int = 0
    # The delivery watermark to store with them (receipts: one write per window, folded
    # into the totals update of the conversation; domain/delivered.py).
    delivered: Mark | None = None


def totals_of(messages: list[Message], event_seqs: list[int]) -> Totals:
    """What these stored messages (and the entries at ``event_seqs``) add to their
    conversation."""
    t = Totals()
    last: Message | None = None
    for m in messages:
        t.messages += 1
        if m.usage is not None:
            t.tokens += m.usage.total_tokens
        if m.cost is not None:
            t.cost += m.cost
        if m.seq is not None and (last is None or (last.seq or 0) < m.seq):
            last = m
    t.last_message = last_message_of(last) if last is not None else None
    t.max_seq = max(event_seqs, default=0)
    return t


def edited(msg: Message, principal: Principal, content: str, *, moderator: bool = False) -> Message:
    """``moderator``: the role matrix (roles) allows this principal to edit any message."""
    if (
        not moderator
        and principal.kind is not PrincipalKind.SERVICE
        and not is_author(msg, principal)
    ):
        raise ParleyError(ErrorCode.FORBIDDEN, "you can only edit your own messages")
    if msg.deleted_at is not None or not msg.is_active:
        raise ParleyError(ErrorCode.CONFLICT, "the message was deleted")
    if not content.strip():
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, "content must not be empty", {"field": "content"}
        )
    at = now_ms()
    return msg.model_copy(
        update={"content": content, "edited_at": at, "updated_at": at, "updated_by": principal.id}
    )


def deleted(msg: Message, principal: Principal, *, moderator: bool = False) -> Message:
    """``moderator``: the role matrix (roles) allows this principal to delete any message."""
    if (
        not moderator
        and principal.kind is not PrincipalKind.SERVICE
        and not is_author(msg, principal)
    ):
        raise ParleyError(ErrorCode.FORBIDDEN, "you can only delete your own messages")
    if msg.deleted_at is not None:
        raise ParleyError(ErrorCode.CONFLICT, "the message was already deleted")
    at = now_ms()
    return msg.model_copy(
        update={
            "content": "",
            "deleted_at": at,
            "is_active": False,
            "updated_at": at,
            "updated_by": principal.id,
        }
    )
