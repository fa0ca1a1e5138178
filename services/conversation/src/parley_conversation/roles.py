"""Who may do what in a conversation: the role matrix, in one place (docs/security.md).

Pure functions, no network: :func:`role_of` finds a principal's role in a conversation,
:func:`may` answers for one action, :func:`update_actions` lists what a
``conversation:update`` needs, and :func:`require` turns a "no" into FORBIDDEN. A
principal is (kind, id): a user and an agent with the same id are different principals.
"""

from __future__ import annotations

import enum

from parley_contract.errors import ErrorCode, ParleyError, forbidden
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Conversation, ConversationStatus, Message, Participant
from parley_contract.models import ParticipantRole as SeatRole
from parley_conversation.domain import is_author


class ConversationRole(enum.StrEnum):
    OWNER = "owner"  # the creator, while an active participant
    PARTICIPANT = "participant"  # an active user participant (role "user")
    OBSERVER = "observer"  # an active participant with role "observer": reads only
    AGENT = "agent"  # the conversation's agent, or an active agent participant
    SERVICE = "service"  # a service principal: acts for the platform


class Action(enum.StrEnum):
    READ = "read"  # join, history, events since
    POST = "post"  # message:send
    REACT = "react"
    EDIT_OWN = "edit-own-message"
    DELETE_OWN = "delete-own-message"
    EDIT_ANY = "edit-any-message"
    DELETE_ANY = "delete-any-message"  # moderation
    STOP = "stop-agent"  # message:stop
    CREATE_TASK = "create-task"
    ADD_PARTICIPANTS = "add-participants"
    REMOVE_SELF = "remove-self"  # how one quits (conversation:update or conversation:leave)
    REMOVE_PARTICIPANTS = "remove-participants"  # others, not the owner
    REMOVE_OWNER = "remove-owner"
    CHANGE_DETAILS = "change-details"  # title, description, tags, context, modelId
    DESCRIBE = "describe"  # an agent's title (never over a user's) and context
    CHANGE_AGENT = "change-agent"
    CHANGE_STATUS = "change-status"  # active <-> archived
    CLOSE = "close"  # status to or from closed
    DELETE = "delete"  # conversation:delete


_O, _P, _B, _A, _S = (
    ConversationRole.OWNER,
    ConversationRole.PARTICIPANT,
    ConversationRole.OBSERVER,
    ConversationRole.AGENT,
    ConversationRole.SERVICE,
)
_EVERYONE = frozenset({_O, _P, _B, _A, _S})
_WRITERS = frozenset({_O, _P, _A, _S})
_MEMBERS = frozenset({_O, _P, _S})  # people who run the room (agents and observers do not)

MATRIX: dict[Action, frozenset[ConversationRole]] = {
    Action.READ: _EVERYONE,
    Action.POST: _WRITERS,
    Action.REACT: _WRITERS,
    Action.EDIT_OWN: _WRITERS,
    Action.DELETE_OWN: _WRITERS,
    Action.EDIT_ANY: frozenset({_S}),
    Action.DELETE_ANY: frozenset({_O, _S}),
    Action.STOP: _WRITERS,
    Action.CREATE_TASK: _WRITERS,
    Action.ADD_PARTICIPANTS: _MEMBERS,
    Action.REMOVE_SELF: _EVERYONE,
    Action.REMOVE_PARTICIPANTS: frozenset({_O, _S}),
    Action.REMOVE_OWNER: frozenset({_O, _S}),
    Action.CHANGE_DETAILS: _MEMBERS,
    Action.DESCRIBE: frozenset({_O, _P, _A, _S}),
    Action.CHANGE_AGENT: _MEMBERS,
    Action.CHANGE_STATUS: frozenset({_O, _S}),
    Action.CLOSE: frozenset({_O, _S}),
    Action.DELETE: frozenset({_O, _S}),
}


def may(role: ConversationRole | None, action: Action) -> bool:
    """Whether a principal with ``role`` (None: no access at all) may do ``action``."""
    return role is not None and role in MATRIX[action]


def _is(p: Participant, kind: PrincipalKind, pid: str) -> bool:
    if kind is PrincipalKind.USER:
        return p.user_id == pid
    if kind is PrincipalKind.AGENT:
        return p.agent_id == pid
    return False


def owner_of(conv: Conversation) -> tuple[PrincipalKind, str] | None:
    """The creator as a principal: the first participant, written by the creator's own
    create (a service's create has no creator participant: no owner)."""
    if not conv.participants or conv.created_by is None:
        return None
    first = conv.participants[0]
    if first.user_id is not None and first.user_id == conv.created_by:
        return PrincipalKind.USER, first.user_id
    if first.agent_id is not None and first.agent_id == conv.created_by:
        return PrincipalKind.AGENT, first.agent_id
    return None


def is_owner(conv: Conversation, principal: Principal) -> bool:
    return owner_of(conv) == (principal.kind, principal.id)


def seat_of(conv: Conversation, principal: Principal) -> Participant | None:
    """The principal's active participant entry (matched on kind and id)."""
    for p in conv.participants:
        if p.left_at is None and _is(p, principal.kind, principal.id):
            return p
    return None


def role_of(conv: Conversation, principal: Principal) -> ConversationRole | None:
    """The principal's role in ``conv``, or None when it has no access."""
    if principal.kind is PrincipalKind.SERVICE:
        return ConversationRole.SERVICE
    seat = seat_of(conv, principal)
    if seat is not None and seat.role is SeatRole.OBSERVER:
        return ConversationRole.OBSERVER
    if principal.kind is PrincipalKind.AGENT:
        if seat is not None or conv.agent_id == principal.id:
            return ConversationRole.AGENT
        return None
    if seat is None:
        return None
    return ConversationRole.OWNER if is_owner(conv, principal) else ConversationRole.PARTICIPANT


def denial(role: ConversationRole | None, action: Action) -> ParleyError:
    """The FORBIDDEN for ``role`` attempting ``action`` (no role: reveals nothing)."""
    if role is None:
        return forbidden()
    return ParleyError(
        ErrorCode.FORBIDDEN,
        f"a conversation's {role.value} may not {action.value.replace('-', ' ')}",
        {"role": role.value, "action": action.value},
    )


def require(role: ConversationRole | None, action: Action) -> None:
    """FORBIDDEN unless ``role`` may do ``action`` (the message names role and action)."""
    if not may(role, action):
        raise denial(role, action)


def message_action(msg: Message, principal: Principal, *, delete: bool) -> Action:
    """The action an edit or delete of ``msg`` by ``principal`` needs."""
    if is_author(msg, principal):
        return Action.DELETE_OWN if delete else Action.EDIT_OWN
    return Action.DELETE_ANY if delete else Action.EDIT_ANY


def _active(conv: Conversation) -> dict[tuple[str, str], Participant]:
    out: dict[tuple[str, str], Participant] = {}
    for p in conv.participants:
        if p.left_at is None:
            key = ("agent", p.agent_id) if p.agent_id else ("user", p.user_id or "")
            out[key] = p
    return out


def update_actions(before: Conversation, after: Conversation, principal: Principal) -> set[Action]:
    """What turning ``before`` into ``after`` takes (compared field by field, so a value
    set to what it already was needs nothing)."""
    actions: set[Action] = set()
    for name in ("title", "description", "tags", "context", "model_id"):
        if getattr(before, name) != getattr(after, name):
            agent = principal.kind is PrincipalKind.AGENT and name in ("title", "context")
            actions.add(Action.DESCRIBE if agent else Action.CHANGE_DETAILS)
    if before.agent_id != after.agent_id:
        actions.add(Action.CHANGE_AGENT)
    if before.status != after.status:
        closing = ConversationStatus.CLOSED in (before.status, after.status)
        actions.add(Action.CLOSE if closing else Action.CHANGE_STATUS)
    old, new = _active(before), _active(after)
    # The agent an agent switch replaces or brings is part of CHANGE_AGENT.
    switched = {("agent", a) for a in (before.agent_id, after.agent_id) if a}
    if before.agent_id == after.agent_id:
        switched = set()
    if any(k not in old and k not in switched for k in new):
        actions.add(Action.ADD_PARTICIPANTS)
    owner = owner_of(before)
    me = (principal.kind.value, principal.id)
    for key in old:
        if key in new or key in switched:
            continue
        if key == me:
            actions.add(Action.REMOVE_SELF)
        elif owner is not None and key == (owner[0].value, owner[1]):
            actions.add(Action.REMOVE_OWNER)
        else:
            actions.add(Action.REMOVE_PARTICIPANTS)
    return actions
