"""Who may read, write, own and author: authorization without network or store."""

from __future__ import annotations

from parley_contract.errors import ErrorCode, ParleyError, forbidden
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Conversation, Message, Participant, Role


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
