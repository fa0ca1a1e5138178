"""Conversations: creation, updates (participants, agent switch), deletion, and the
system messages a conversation change writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from parley_contract.commands import (
    DEFAULT_TITLE,
    ConversationCreate,
    ConversationUpdate,
    ParticipantIn,
    TaskCreate,
)
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.ids import new_id
from parley_contract.internal import Principal
from parley_contract.models import (
    Conversation,
    Message,
    MessageStatus,
    MessageType,
    Participant,
    ParticipantRole,
    Role,
    TitleSource,
)
from parley_conversation.domain.access import is_owner
from parley_conversation.domain.checks import check_keys
from parley_conversation.domain.clock import later_than, now_ms


def delete_conversation(conv: Conversation, principal: Principal) -> Conversation:
    """The soft-deleted conversation (owner only: FORBIDDEN otherwise)."""
    if not is_owner(conv, principal):
        raise ParleyError(ErrorCode.FORBIDDEN, "only the conversation's creator may delete it")
    at = later_than(conv.updated_at)
    return conv.model_copy(
        update={"is_active": False, "deleted_at": at, "updated_at": at, "updated_by": principal.id}
    )


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
    named: dict[str, Any] = {}  # left out (not null) while the title is the default one
    if "title" in cmd.model_fields_set:
        named["title_source"] = title_source(principal)
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
        **named,
    )


def title_source(principal: Principal) -> TitleSource:
    """Who a title written by ``principal`` counts as written by."""
    return TitleSource.AGENT if principal.kind is PrincipalKind.AGENT else TitleSource.USER


def agent_may_title(conv: Conversation) -> bool:
    """Whether an agent's title may replace this conversation's: not one a user wrote (a
    conversation older than ``titleSource`` counts as such unless its title is the default)."""
    if conv.title_source is None:
        return conv.title == DEFAULT_TITLE
    return conv.title_source is TitleSource.AGENT


def call_cost(cmd: ConversationUpdate) -> tuple[int, float]:
    """(tokens, cost) of the model call an agent's update reports (its title, context)."""
    return (cmd.usage.total_tokens if cmd.usage else 0), (cmd.cost or 0.0)


def with_call_cost(conv: Conversation, cmd: ConversationUpdate) -> Conversation:
    """The conversation with the update's model call in its totals (the event shows them)."""
    tokens, cost = call_cost(cmd)
    if not tokens and not cost:
        return conv
    return conv.model_copy(
        update={"total_tokens": conv.total_tokens + tokens, "total_cost": conv.total_cost + cost}
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
    fields = cmd.model_fields_set - {"conversation_id", "usage", "cost"}
    if principal.kind is PrincipalKind.USER and (cmd.usage is not None or cmd.cost is not None):
        name = "usage" if cmd.usage is not None else "cost"
        raise ParleyError(ErrorCode.FORBIDDEN, f"only agents may set {name}", {"field": name})
    if "title" in fields and principal.kind is PrincipalKind.AGENT and not agent_may_title(conv):
        fields.discard("title")  # a user's title is never overwritten by an agent's
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
            if name == "title":
                new.title_source = title_source(principal)
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
