"""Domain rules of conversations and messages: plain functions, no network, no store.

Authorization, role rules, document construction, totals of a batch and the agent-switch
system message live here so they are unit-tested without NATS or MongoDB.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from parley_contract.commands import (
    ConversationCreate,
    ConversationUpdate,
    MessageSend,
    ParticipantIn,
    TaskCreate,
)
from parley_contract.errors import ErrorCode, ParleyError, forbidden
from parley_contract.events import PrincipalKind
from parley_contract.ids import new_id
from parley_contract.internal import Principal
from parley_contract.limits import MAX_FREE_FORM_DEPTH
from parley_contract.models import (
    Conversation,
    LastMessage,
    Message,
    MessageStatus,
    MessageType,
    Participant,
    ParticipantRole,
    Role,
)

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
MAX_METADATA_DEPTH = MAX_FREE_FORM_DEPTH  # one place for the limits: parley_contract.limits
LAST_MESSAGE_PREVIEW_CHARS = 500


def now_ms() -> datetime:
    """Now in UTC, truncated to milliseconds (what BSON stores), so replies equal reads."""
    now = datetime.now(UTC)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def later_than(previous: datetime | None) -> datetime:
    """Now, but strictly after ``previous``: a conversation's ``updatedAt`` is the version
    its optimistic updates compare, so two updates must never write the same value."""
    at = now_ms()
    if previous is not None and at <= previous:
        at = previous + timedelta(milliseconds=1)
    return at


# ---------------------------------------------------------------- authorization


def active_participant(conv: Conversation, principal: Principal) -> Participant | None:
    """The principal's active participant entry: a user by ``userId``, an agent by
    ``agentId`` (a user token whose ``sub`` is an agent's id is not that agent)."""
    for p in conv.participants:
        if p.left_at is None and p.is_principal(principal.kind, principal.id):
            return p
    return None


def can_access(conv: Conversation, principal: Principal) -> bool:
    """Users: active participants. Agents: the assigned agent or an active agent participant.

    The same rule as ``parley_contract.access.Audience`` (which the gateways apply live),
    except that a closed conversation stays readable here.
    """
    if principal.kind is PrincipalKind.SERVICE:
        return True
    if principal.kind is PrincipalKind.AGENT and conv.agent_id == principal.id:
        return True
    return active_participant(conv, principal) is not None


def is_author(msg: Message, principal: Principal) -> bool:
    """Whether ``principal`` wrote ``msg``: the same id *and* kind (a user's messages have
    role ``user``, an agent's ``assistant`` or ``tool``), so the user ``x`` is not the
    author of the agent ``x``'s messages, nor the reverse."""
    if msg.created_by != principal.id:
        return False
    if principal.kind is PrincipalKind.USER:
        return msg.role is Role.USER
    if principal.kind is PrincipalKind.AGENT:
        return msg.role in (Role.ASSISTANT, Role.TOOL)
    return msg.role is Role.SYSTEM


def authorize(conv: Conversation | None, principal: Principal) -> Conversation:
    """The conversation if the principal may read/write it; else FORBIDDEN (revealing nothing).

    A deleted conversation is NOT_FOUND for its members (services still read its log: the
    gateways' gap fill of the conversation:deleted event itself)."""
    if conv is None or not can_access(conv, principal):
        raise forbidden()
    if conv.deleted_at is not None and principal.kind is not PrincipalKind.SERVICE:
        raise deleted_error(conv.id)
    return conv


def deleted_error(conversation_id: str) -> ParleyError:
    return ParleyError(
        ErrorCode.NOT_FOUND,
        "the conversation was deleted",
        {"conversationId": conversation_id, "reason": "deleted"},
    )


def is_owner(conv: Conversation, principal: Principal) -> bool:
    """Its creator (still a participant), or one of Parley's services."""
    if principal.kind is PrincipalKind.SERVICE:
        return True
    return conv.created_by == principal.id and can_access(conv, principal)


def delete_conversation(conv: Conversation, principal: Principal) -> Conversation:
    """The soft-deleted conversation (owner only: FORBIDDEN otherwise)."""
    if not is_owner(conv, principal):
        raise ParleyError(ErrorCode.FORBIDDEN, "only the conversation's creator may delete it")
    at = later_than(conv.updated_at)
    return conv.model_copy(
        update={"is_active": False, "deleted_at": at, "updated_at": at, "updated_by": principal.id}
    )


# ---------------------------------------------------------------- validation helpers


def check_keys(value: Any, field: str, depth: int = 0) -> None:
    """Refuse keys a document store cannot hold (``$...``, dots) and absurd nesting."""
    if depth > MAX_METADATA_DEPTH:
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, f"{field}: nested too deeply", {"field": field}
        )
    if isinstance(value, dict):
        for key, sub in value.items():
            if not isinstance(key, str) or key.startswith("$") or "." in key or "\x00" in key:
                raise ParleyError(
                    ErrorCode.VALIDATION_ERROR,
                    f"{field}: keys must not start with '$' or contain '.'",
                    {"field": field},
                )
            check_keys(sub, field, depth + 1)
    elif isinstance(value, list):
        for sub in value:
            check_keys(sub, field, depth + 1)


def check_emoji(emoji: str) -> str:
    if emoji.startswith("$") or "." in emoji or "\x00" in emoji or not emoji.strip():
        raise ParleyError(
            ErrorCode.VALIDATION_ERROR, "emoji: not a valid reaction", {"field": "emoji"}
        )
    return emoji


# ---------------------------------------------------------------- conversations


def _participant_from(ref: ParticipantIn, at: datetime) -> Participant:
    """A command's participant (the seed's ``{userId | agentId, role}``, ``{id, kind, role}``
    or a bare user id) as stored: the seed's shape with ``joinedAt``."""
    if ref.is_agent:
        role = ref.role or ParticipantRole.AGENT
        return Participant(agent_id=ref.principal_id, role=role, joined_at=at)
    role = ref.role or ParticipantRole.USER
    return Participant(user_id=ref.principal_id, role=role, joined_at=at)


def _principal_of(ref: ParticipantIn) -> tuple[PrincipalKind, str]:
    """A command's participant as ``(kind, id)`` (a bare id is a user): removing the user
    ``x`` leaves the agent ``x`` in, and the reverse."""
    return (PrincipalKind.AGENT if ref.is_agent else PrincipalKind.USER), ref.principal_id


def _creator_participant(principal: Principal, at: datetime) -> Participant | None:
    if principal.kind is PrincipalKind.USER:
        return Participant(user_id=principal.id, role=ParticipantRole.USER, joined_at=at)
    if principal.kind is PrincipalKind.AGENT:
        return Participant(agent_id=principal.id, role=ParticipantRole.AGENT, joined_at=at)
    return None


def _merge_participants(
    existing: list[Participant], new: list[Participant]
) -> tuple[list[Participant], list[Participant]]:
    """Existing + new ones not already active. Returns (all, added)."""
    active = {p.principal for p in existing if p.active}
    added: list[Participant] = []
    for p in new:
        if p.principal not in active:
            active.add(p.principal)
            added.append(p)
    return [*existing, *added], added


def new_conversation(principal: Principal, cmd: ConversationCreate) -> Conversation:
    at = now_ms()
    cid = cmd.conversation_id or new_id("conv")
    check_keys(cmd.context.model_dump() if cmd.context else None, "context")
    wanted: list[Participant] = []
    creator = _creator_participant(principal, at)
    if creator is not None:
        wanted.append(creator)
    wanted.extend(_participant_from(ref, at) for ref in cmd.participants)
    if cmd.agent_id:
        wanted.append(Participant(agent_id=cmd.agent_id, role=ParticipantRole.AGENT, joined_at=at))
    participants, _ = _merge_participants([], wanted)
    return Conversation(
        id=cid,
        conversation_id=cid,
        title=cmd.title,
        description=cmd.description,
        agent_id=cmd.agent_id,
        model_id=cmd.model_id,
        conversation_type=cmd.conversation_type,
        participants=participants,
        tags=list(cmd.tags),
        context=cmd.context,
        status=cmd.status,
        created_by=principal.id,
        updated_by=principal.id,
        created_at=at,
        updated_at=at,
        is_active=True,
        total_tokens=0,
        total_messages=0,
        total_cost=0.0,
        last_seq=0,
    )


@dataclass
class ConversationChange:
    """What a conversation:update does: the new document plus what changed."""

    conversation: Conversation
    changed: list[str]
    added: list[Participant]
    removed: list[str]
    previous_agent_id: str | None
    agent_switched: bool


def apply_update(
    conv: Conversation, principal: Principal, cmd: ConversationUpdate
) -> ConversationChange:
    """The conversation after an update (pure; the store writes it conditionally)."""
    at = later_than(conv.updated_at)
    fields = cmd.model_fields_set - {"conversation_id"}
    new = conv.model_copy(deep=True)
    changed: list[str] = []
    for name in ("title", "description", "status", "tags", "model_id", "context"):
        if name in fields:
            value = getattr(cmd, name)
            if name == "title" and value is None:
                raise ParleyError(
                    ErrorCode.VALIDATION_ERROR, "title: must not be null", {"field": "title"}
                )
            if name == "context" and value is not None:
                check_keys(value.model_dump(), "context")
            if name == "tags" and value is None:
                value = []
            if name == "status" and value is None:
                raise ParleyError(
                    ErrorCode.VALIDATION_ERROR, "status: must not be null", {"field": "status"}
                )
            setattr(new, name, value)
            changed.append(name)
    previous_agent = conv.agent_id
    switched = False
    participants = list(new.participants)
    added: list[Participant] = []
    removed: list[str] = []
    if "agent_id" in fields and cmd.agent_id != conv.agent_id:
        switched = True
        new.agent_id = cmd.agent_id
        changed.append("agent_id")
        if previous_agent:
            participants = [
                p.model_copy(update={"left_at": at})
                if p.active and p.agent_id == previous_agent
                else p
                for p in participants
            ]
            removed.append(previous_agent)
        if cmd.agent_id:
            participants, more = _merge_participants(
                participants,
                [Participant(agent_id=cmd.agent_id, role=ParticipantRole.AGENT, joined_at=at)],
            )
            added.extend(more)
    additions: list[ParticipantIn] = list(cmd.add_participants or [])
    removals = [_principal_of(r) for r in cmd.remove_participants or []]
    if "participants" in fields and cmd.participants is not None:
        # The seed's way: the whole list. Active entries missing from it leave (leftAt);
        # new ones join; the roles of entries that stay are kept.
        keep = {_principal_of(r) for r in cmd.participants}
        removals += [p.principal for p in participants if p.active and p.principal not in keep]
        additions += cmd.participants
    if removals:
        gone = set(removals)
        participants = [
            p.model_copy(update={"left_at": at}) if p.active and p.principal in gone else p
            for p in participants
        ]
        removed.extend(sorted({pid for _, pid in gone}))
        changed.append("participants")
    if additions:
        participants, more = _merge_participants(
            participants, [_participant_from(ref, at) for ref in additions]
        )
        added.extend(more)
        if more and "participants" not in changed:
            changed.append("participants")
    if switched and "participants" not in changed:
        changed.append("participants")
    new.participants = participants
    new.updated_at = at
    new.updated_by = principal.id
    return ConversationChange(new, changed, added, removed, previous_agent, switched)


def agent_offline_message(conv_id: str, agent_id: str) -> Message:
    """Stored when a user writes to an agent nobody serves now (issue 13: never silent)."""
    at = now_ms()
    text = (
        f"Agent '{agent_id}' is offline: no agent bridge serves it right now. "
        "It answers once it is back."
    )
    return Message(
        id=new_id("msg"),
        conversation_id=conv_id,
        role=Role.SYSTEM,
        message_type=MessageType.ERROR,
        content=text,
        error=text,
        agent_id=agent_id,
        metadata={"reason": "agent-offline", "agentId": agent_id},
        message_status=MessageStatus.SENT,
        created_by="parley",
        updated_by="parley",
        created_at=at,
        updated_at=at,
        is_active=True,
    )


def agent_switch_message(
    conv_id: str,
    previous_agent_id: str | None,
    new_agent_id: str | None,
    by: str,
    names: dict[str, str] | None = None,
) -> Message:
    """The system message of design-doc sample case 19."""
    names = names or {}
    old = names.get(previous_agent_id or "", previous_agent_id or "none")
    new = names.get(new_agent_id or "", new_agent_id or "none")
    at = now_ms()
    return Message(
        id=new_id("msg"),
        conversation_id=conv_id,
        role=Role.SYSTEM,
        message_type=MessageType.SYSTEM,
        content=f"Agent switched from '{old}' to '{new}'",
        metadata={"previousAgentId": previous_agent_id, "newAgentId": new_agent_id},
        message_status=MessageStatus.SENT,
        created_by=by,
        updated_by=by,
        created_at=at,
        updated_at=at,
        is_active=True,
    )


# ---------------------------------------------------------------- messages


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
    for name in (
        "name",
        "parent_message_id",
        "tool_calls",
        "tool_results",
        "thinking",
        "usage",
        "latency",
        "error",
        "attachments",
        "metadata",
        "finish_reason",
        "cost",
        "client_message_id",
    ):
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
    last: Message | None = None
    max_seq: int = 0


def totals_of(messages: list[Message], event_seqs: list[int]) -> Totals:
    t = Totals()
    for m in messages:
        t.messages += 1
        if m.usage is not None:
            t.tokens += m.usage.total_tokens
        if m.cost is not None:
            t.cost += m.cost
        if m.seq is not None and (t.last is None or (t.last.seq or 0) < m.seq):
            t.last = m
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


def new_task(principal: Principal, cmd: TaskCreate, conv: Conversation) -> dict[str, Any]:
    at = now_ms()
    task: dict[str, Any] = {
        "_id": new_id("task"),
        "conversationId": cmd.conversation_id,
        "title": cmd.title,
        "description": cmd.description,
        "agentId": cmd.agent_id or conv.agent_id,
        "status": "pending",
        "createdBy": principal.id,
        "createdAt": at,
        "updatedAt": at,
    }
    return task


# ---------------------------------------------------------------- reply size


def cap_page(
    items: list[Any], sizes: list[int], budget: int, hard_max: int, *, keep_end: bool = False
) -> tuple[list[Any], bool]:
    """The longest run of ``items`` whose ``sizes`` add up to at most ``budget`` bytes.

    From the start (``keep_end=False``: ascending pages cut their newest tail) or from the end
    (``keep_end=True``: "the latest N" pages cut their oldest head). Always at least one item
    as long as it fits in ``hard_max`` (the bus's max payload minus the envelope); a single
    item larger than that cannot be sent at all: ``PAYLOAD_TOO_LARGE`` (``details.index``).
    Returns the kept items (in their original order) and whether any were cut.
    """
    if not items:
        return [], False
    order = range(len(items) - 1, -1, -1) if keep_end else range(len(items))
    kept: list[int] = []
    total = 0
    for i in order:
        size = sizes[i]
        if not kept:
            if size > hard_max:
                raise ParleyError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"one item is {size} bytes, over the {hard_max}-byte reply limit",
                    {"index": i, "bytes": size, "maxBytes": hard_max},
                )
        elif total + size > budget:
            break
        kept.append(i)
        total += size
    if keep_end:
        kept.reverse()
    return [items[i] for i in kept], len(kept) < len(items)
