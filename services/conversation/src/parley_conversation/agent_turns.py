"""What the conversation service does toward agents: publish the agent turn of each user
message in a conversation with an agent (JetStream, deduplicated), say "queued" meanwhile,
and refuse or notice an agent nobody serves."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from nats.errors import Error as NatsError

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.agents import LOOKUP_TIMEOUT_SECONDS, AgentDirectory
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import AgentTurn, Principal
from parley_contract.models import Conversation, Message, Role
from parley_contract.turnstate import TurnState
from parley_conversation import domain

if TYPE_CHECKING:
    from parley_conversation.service import ConversationService

logger = logging.getLogger(__name__)

PARLEY = Principal(id="parley", kind=PrincipalKind.SERVICE)


async def after_store(svc: ConversationService, conv: Conversation, stored: list[Message]) -> None:
    """Agent turns for user messages in a conversation with an agent (JetStream, dedup)."""
    if not conv.agent_id:
        return
    # A user wrote to an agent nobody serves now: a notice instead of "queued".
    noticed = False
    if any(m.role is Role.USER for m in stored):
        noticed = await _agent_offline_notice(svc, conv, conv.agent_id)

    async def one(m: Message) -> None:
        assert conv.agent_id is not None and m.seq is not None
        if not noticed:
            await _turn_queued(svc, conv, conv.agent_id, m.id)
        turn = AgentTurn(
            conversation_id=conv.id, agent_id=conv.agent_id, message_id=m.id, seq=m.seq
        )
        if svc.agent_watch is not None and not noticed:
            svc.agent_watch.track(conv.id, conv.agent_id, m.id, m.seq)
        # Through the outbox (outbox.py): retried until JetStream acknowledges it.
        await svc.outbox.send(turn)

    await asyncio.gather(*(one(m) for m in stored if m.role is Role.USER))


def _directory(svc: ConversationService) -> AgentDirectory:
    if svc.agents is None:
        svc.agents = AgentDirectory(svc.broker.connection.jetstream())
    return svc.agents


async def _served(svc: ConversationService, agent_id: str, *, cached: bool) -> bool | None:
    """Whether someone serves the agent; None when the KV could not tell."""
    try:
        return await asyncio.wait_for(
            _directory(svc).is_served(agent_id, cached=cached), LOOKUP_TIMEOUT_SECONDS
        )
    except (TimeoutError, NatsError) as exc:
        logger.warning("could not look up agent %s: %r", agent_id, exc)
        return None


async def check_agent(svc: ConversationService, agent_id: str) -> None:
    """NOT_FOUND for an agentId that no agent bridge serves and no agent connection is."""
    if await _served(svc, agent_id, cached=False) is False:
        raise ParleyError(
            ErrorCode.NOT_FOUND,
            f"no agent '{agent_id}' is available (GET /v1/agents lists them)",
            {"field": "agentId"},
        )


async def _turn_queued(
    svc: ConversationService, conv: Conversation, agent_id: str, message_id: str
) -> None:
    """Between the user's message and the bridge's first frame, a turn is running:
    agent:thinking {status: queued} to the conversation and the same as its turn state
    (turnstate.py), so that a client joining now sees it too."""
    data = {
        "conversationId": conv.id,
        "agentId": agent_id,
        "parentMessageId": message_id,
        "status": "queued",
    }
    state = TurnState()
    state.apply(Event.AGENT_THINKING.value, data)
    await svc.publish(
        subjects.kv_key_subject(subjects.KV_TURNS, conv.id), jsonutil.dumps(state.to_json())
    )
    frame = envelopes.event_frame(Event.AGENT_THINKING, data, conversation_id=conv.id)
    await svc.publish(subjects.conversation_events(conv.id), jsonutil.dumps(frame))


async def _agent_offline_notice(
    svc: ConversationService, conv: Conversation, agent_id: str
) -> bool:
    """A user wrote to an agent that went away: say so (ephemeral agent:offline and a
    stored error notice) instead of leaving the message unanswered in silence. The turn
    stays queued: a bridge that serves the agent again answers it."""
    if await _served(svc, agent_id, cached=True) is not False:
        return False
    data = {"agentId": agent_id, "conversationId": conv.id, "reason": "not-served"}
    frame = envelopes.event_frame(Event.AGENT_OFFLINE, data, conversation_id=conv.id)
    await svc.publish(subjects.conversation_events(conv.id), jsonutil.dumps(frame))
    notice = domain.agent_offline_message(conv.id, agent_id)
    try:
        await svc.sequencer.send(PARLEY, notice)
    except ParleyError as exc:
        logger.warning("agent-offline notice in %s not stored: %s", conv.id, exc)
    return True
