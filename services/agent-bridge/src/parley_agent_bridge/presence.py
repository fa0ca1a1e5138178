"""Agent presence: each agent this replica serves in KV ``subjects.KV_AGENTS`` (key
``<agentId>.<instanceId>``, refreshed every TTL/3, at least every ``AGENT_LIVENESS_SECONDS``),
``agent:online`` to the agent's conversations at start and ``agent:offline`` when the last
replica serving it stops."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors

from parley_agent_bridge.bridge_state import BridgeState
from parley_agent_bridge.config import AgentConfig
from parley_agent_bridge.nats_io import agent_principal, query
from parley_contract import envelopes, jsonutil, kvread, subjects
from parley_contract.agent_events import AgentAvailability
from parley_contract.errors import ParleyError
from parley_contract.events import Event
from parley_contract.internal import AGENT_LIVENESS_SECONDS
from parley_contract.timeutil import now_iso
from parley_runtime import tasks

logger = logging.getLogger(__name__)


class Presence(BridgeState):
    """Writes and withdraws the agents' presence, announces them to conversations."""

    async def _heartbeat(self) -> None:
        if self.kv is None:
            return
        for agent in self.agents.values():
            value = AgentAvailability(
                agent_id=agent.id,
                name=agent.name,
                description=agent.description,
                model=agent.model,
                models=[agent.model],
                online=True,
                instance_id=self.instance_id,
                updated_at=now_iso(),
            ).model_dump(by_alias=True, exclude_none=True)
            await self.kv.put(f"{agent.id}.{self.instance_id}", jsonutil.dumps(value))

    async def _presence_loop(self) -> None:
        # At least every AGENT_LIVENESS_SECONDS: the conversation service takes three missed
        # beats for "no replica left" and fails the agent's open turns visibly.
        interval = min(self.settings.presence_ttl_seconds / 3, AGENT_LIVENESS_SECONDS)
        await tasks.every(
            interval,
            self._heartbeat,
            what="agent presence heartbeat",
            expected=(nats.errors.Error, nats.js.errors.Error),
            log=logger,
        )

    async def _conversations_of(self, agent: AgentConfig) -> set[str]:
        assert self.nc is not None
        if self.settings.presence_conversations <= 0:
            return set()
        data = await query(
            self.nc,
            subjects.QUERY_CONVERSATIONS_LIST,
            agent_principal(agent),
            {"limit": min(self.settings.presence_conversations, 100), "status": "active"},
            self.settings.request_timeout_seconds,
        )
        items = (data or {}).get("items", []) if isinstance(data, dict) else []
        return {
            str(c.get("conversationId") or c.get("_id"))
            for c in items
            if isinstance(c, dict) and (c.get("conversationId") or c.get("_id"))
        }

    async def _announce(self, agent: AgentConfig, conversations: set[str], online: bool) -> None:
        assert self.nc is not None
        event = Event.AGENT_ONLINE if online else Event.AGENT_OFFLINE
        for cid in conversations:
            data = {
                "agentId": agent.id,
                "name": agent.name,
                "instanceId": self.instance_id,
                "conversationId": cid,
            }
            frame = envelopes.event_frame(event, data, conversation_id=cid)
            await self.nc.publish(subjects.conversation_ephemeral(cid), jsonutil.dumps(frame))

    async def _announce_all(self, online: bool) -> None:
        for agent in self.agents.values():
            for attempt in range(5):
                try:
                    convs = await self._conversations_of(agent)
                    break
                except ParleyError as exc:
                    logger.info("listing conversations of %s failed: %s", agent.id, exc)
                    await asyncio.sleep(1.0 + attempt)
            else:
                continue
            self._announced[agent.id] |= convs
            await self._announce(agent, convs, online)

    async def _withdraw_presence(self) -> None:
        if self.kv is None or self.nc is None or not self.nc.is_connected:
            return
        for agent in self.agents.values():
            try:
                await self.kv.delete(f"{agent.id}.{self.instance_id}")
                others = [
                    k
                    for k in await self._agent_keys()
                    if k.startswith(f"{agent.id}.") and k != f"{agent.id}.{self.instance_id}"
                ]
                if not others:
                    await self._announce(agent, self._announced.get(agent.id, set()), online=False)
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                logger.warning("withdrawing presence of %s failed: %r", agent.id, exc)

    async def _agent_keys(self) -> list[str]:
        assert self.nc is not None
        return await kvread.live_keys(self.nc.jetstream(), subjects.KV_AGENTS)
