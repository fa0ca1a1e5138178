"""The role matrix (parley_conversation.roles), without network."""

from __future__ import annotations

import pytest

from parley_contract.commands import ConversationCreate, ConversationUpdate, MessageSend
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Conversation, ConversationStatus
from parley_conversation import domain, roles
from parley_conversation.roles import Action, ConversationRole

R = ConversationRole
OWNER = Principal(id="u-owner", kind=PrincipalKind.USER, name="Owner")
BOB = Principal(id="u-bob", kind=PrincipalKind.USER, name="Bob")
OBS = Principal(id="u-obs", kind=PrincipalKind.USER)
AGENT = Principal(id="agent-1", kind=PrincipalKind.AGENT)
SVC = Principal(id="svc", kind=PrincipalKind.SERVICE)
OUTSIDER = Principal(id="u-out", kind=PrincipalKind.USER)


def room() -> Conversation:
    cmd = ConversationCreate.model_validate(
        {
            "agentId": "agent-1",
            "participants": ["u-bob", {"userId": "u-obs", "role": "observer"}],
        }
    )
    return domain.new_conversation(OWNER, cmd)


def update(conv: Conversation, who: Principal, **data: object) -> set[Action]:
    cmd = ConversationUpdate.model_validate({"conversationId": conv.id, **data})
    change = domain.apply_update(conv, who, cmd)
    return roles.update_actions(conv, change.conversation, who)


def test_roles_of_principals() -> None:
    conv = room()
    assert roles.role_of(conv, OWNER) is R.OWNER
    assert roles.role_of(conv, BOB) is R.PARTICIPANT
    assert roles.role_of(conv, OBS) is R.OBSERVER
    assert roles.role_of(conv, AGENT) is R.AGENT
    assert roles.role_of(conv, SVC) is R.SERVICE
    assert roles.role_of(conv, OUTSIDER) is None
    # (kind, id): a user named like the agent, an agent named like the owner: strangers.
    assert roles.role_of(conv, Principal(id="agent-1", kind=PrincipalKind.USER)) is None
    assert roles.role_of(conv, Principal(id="u-owner", kind=PrincipalKind.AGENT)) is None
    # The owner who quit is nobody there.
    cmd = ConversationUpdate.model_validate(
        {"conversationId": conv.id, "removeParticipants": ["u-owner"]}
    )
    gone = domain.apply_update(conv, OWNER, cmd).conversation
    assert roles.role_of(gone, OWNER) is None


@pytest.mark.parametrize(
    ("action", "allowed"),
    [
        (Action.READ, {R.OWNER, R.PARTICIPANT, R.OBSERVER, R.AGENT, R.SERVICE}),
        (Action.POST, {R.OWNER, R.PARTICIPANT, R.AGENT, R.SERVICE}),
        (Action.EDIT_OWN, {R.OWNER, R.PARTICIPANT, R.AGENT, R.SERVICE}),
        (Action.EDIT_ANY, {R.SERVICE}),
        (Action.DELETE_ANY, {R.OWNER, R.SERVICE}),
        (Action.ADD_PARTICIPANTS, {R.OWNER, R.PARTICIPANT, R.SERVICE}),
        (Action.REMOVE_SELF, {R.OWNER, R.PARTICIPANT, R.OBSERVER, R.AGENT, R.SERVICE}),
        (Action.REMOVE_PARTICIPANTS, {R.OWNER, R.SERVICE}),
        (Action.REMOVE_OWNER, {R.OWNER, R.SERVICE}),
        (Action.CHANGE_DETAILS, {R.OWNER, R.PARTICIPANT, R.SERVICE}),
        (Action.DESCRIBE, {R.OWNER, R.PARTICIPANT, R.AGENT, R.SERVICE}),
        (Action.CHANGE_AGENT, {R.OWNER, R.PARTICIPANT, R.SERVICE}),
        (Action.CLOSE, {R.OWNER, R.SERVICE}),
        (Action.DELETE, {R.OWNER, R.SERVICE}),
    ],
)
def test_matrix(action: Action, allowed: set[ConversationRole]) -> None:
    assert {r for r in R if roles.may(r, action)} == allowed
    assert not roles.may(None, action)


def test_every_action_has_a_row() -> None:
    assert set(roles.MATRIX) == set(Action)


def test_what_an_update_needs() -> None:
    conv = room()
    assert update(conv, BOB, title="x") == {Action.CHANGE_DETAILS}
    assert update(conv, BOB, title=conv.title) == set()  # unchanged: nothing needed
    assert update(conv, BOB, status="closed") == {Action.CLOSE}
    assert update(conv, BOB, status="archived") == {Action.CHANGE_STATUS}
    assert update(conv, BOB, removeParticipants=["u-bob"]) == {Action.REMOVE_SELF}
    assert update(conv, BOB, removeParticipants=["u-owner"]) == {Action.REMOVE_OWNER}
    assert update(conv, BOB, removeParticipants=["u-obs"]) == {Action.REMOVE_PARTICIPANTS}
    assert update(conv, BOB, addParticipants=["u-new"]) == {Action.ADD_PARTICIPANTS}
    assert update(conv, BOB, agentId="agent-2") == {Action.CHANGE_AGENT}
    # An agent titles and describes (DESCRIBE); anything else of the details it may not.
    assert update(conv, AGENT, title="x", context={"summary": "s"}) == {Action.DESCRIBE}
    assert update(conv, AGENT, description="x") == {Action.CHANGE_DETAILS}
    # The seed's whole list leaving the owner out removes the owner.
    keep = [{"userId": "u-bob"}, {"userId": "u-obs", "role": "observer"}, {"agentId": "agent-1"}]
    assert update(conv, BOB, participants=keep) == {Action.REMOVE_OWNER}
    closed = conv.model_copy(update={"status": ConversationStatus.CLOSED})
    assert update(closed, OWNER, status="active") == {Action.CLOSE}  # reopening too


def test_require_and_messages() -> None:
    with pytest.raises(ParleyError) as info:
        roles.require(R.OBSERVER, Action.POST)
    assert info.value.code is ErrorCode.FORBIDDEN
    assert info.value.details == {"role": "observer", "action": "post"}
    with pytest.raises(ParleyError) as info:
        roles.require(None, Action.READ)
    assert info.value.details is None  # says nothing about the conversation
    conv = room()
    mine = domain.new_message(BOB, MessageSend(conversation_id=conv.id, content="hi"))
    assert roles.message_action(mine, BOB, delete=True) is Action.DELETE_OWN
    assert roles.message_action(mine, OWNER, delete=True) is Action.DELETE_ANY
    # A user whose id is the agent's does not own the agent's messages.
    answer = domain.new_message(AGENT, MessageSend(conversation_id=conv.id, content="yo"))
    twin = Principal(id="agent-1", kind=PrincipalKind.USER)
    assert roles.message_action(answer, twin, delete=False) is Action.EDIT_ANY


def test_name_comes_from_the_token() -> None:
    conv = room()
    cmd = MessageSend.model_validate({"conversationId": conv.id, "content": "hi", "name": "Alice"})
    assert domain.new_message(BOB, cmd).name == "Bob"
    nameless = Principal(id="u-x", kind=PrincipalKind.USER)
    assert domain.new_message(nameless, cmd).name == "u-x"
    assert domain.new_message(SVC, cmd).name == "Alice"  # services write for others


def test_an_agent_never_overwrites_a_users_title() -> None:
    conv = room()  # created without a title: the default one, no titleSource
    assert conv.title_source is None
    named = domain.apply_update(
        conv, AGENT, ConversationUpdate(conversation_id=conv.id, title="Auto")
    )
    assert named.conversation.title == "Auto"
    assert named.conversation.title_source == "agent"
    # A later agent title may replace the agent's own.
    again = domain.apply_update(
        named.conversation, AGENT, ConversationUpdate(conversation_id=conv.id, title="Auto 2")
    )
    assert again.conversation.title == "Auto 2"
    # A user's title: the agent's is dropped, the rest of its update applies.
    mine = domain.apply_update(conv, BOB, ConversationUpdate(conversation_id=conv.id, title="Mine"))
    assert mine.conversation.title_source == "user"
    cmd = ConversationUpdate.model_validate(
        {"conversationId": conv.id, "title": "Auto", "context": {"summary": "s"}}
    )
    change = domain.apply_update(mine.conversation, AGENT, cmd)
    assert change.conversation.title == "Mine"
    assert change.changed == ["context"]
    # Created with a title, even the default text: a user's.
    titled = domain.new_conversation(
        OWNER, ConversationCreate.model_validate({"title": "New conversation"})
    )
    assert titled.title_source == "user"
    assert (
        domain.apply_update(
            titled, AGENT, ConversationUpdate(conversation_id=titled.id, title="Auto")
        ).changed
        == []
    )
    # Older than titleSource: a non-default title counts as a user's.
    old = conv.model_copy(update={"title": "Picked by hand"})
    assert (
        domain.apply_update(
            old, AGENT, ConversationUpdate(conversation_id=conv.id, title="Auto")
        ).changed
        == []
    )


def test_usage_and_cost_on_an_update_are_for_agents() -> None:
    conv = room()
    cmd = ConversationUpdate.model_validate({"conversationId": conv.id, "title": "x", "cost": 0.5})
    with pytest.raises(ParleyError) as info:
        domain.apply_update(conv, BOB, cmd)
    assert info.value.code is ErrorCode.FORBIDDEN
    assert domain.apply_update(conv, AGENT, cmd).conversation.title == "x"
