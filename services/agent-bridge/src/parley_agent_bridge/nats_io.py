"""The agent bridge's requests to the conversation service: a turn's writes and events
(:class:`NatsTurnIO`, with the turn's state in KV for joiners) and queries (:func:`query`;
:func:`routed` for one conversation's, to its partition's owner), as the agent."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

from parley_agent_bridge.config import AgentConfig
from parley_agent_bridge.turn import WriteError
from parley_contract import envelopes, jsonutil, subjects
from parley_contract.errors import ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import CommandRequest, Principal
from parley_contract.routes import ROUTES, QueryRoute, Route
from parley_contract.turnstate import KV_TTL_SECONDS, WRITE_INTERVAL_SECONDS, TurnState
from parley_runtime import requests

logger = logging.getLogger(__name__)

# First attempt's timeout of a write (then twice as long each time, within the budget): the
# gateways' default (PARLEY_GATEWAY_ATTEMPT_TIMEOUT_SECONDS).
ATTEMPT_TIMEOUT_SECONDS = 0.75


def agent_principal(agent: AgentConfig) -> Principal:
    return Principal(id=agent.id, kind=PrincipalKind.AGENT, name=agent.name)


class NatsTurnIO:
    """TurnIO over NATS: message:send requests as the agent, events on the conversation.

    With ``track``, it also keeps the turn's state (parley_contract.turnstate) in the KV
    bucket ``subjects.KV_TURNS``, key = the conversation: written before a status or stream
    start/end frame is published, at most every WRITE_INTERVAL_SECONDS while text streams,
    refreshed while the turn runs, deleted when it ends (:meth:`close`). Writes are plain
    publishes to the key's subject (no acknowledgement wait), in order with the frames.
    """

    def __init__(
        self,
        nc: NatsClient,
        agent: AgentConfig,
        conversation_id: str,
        timeout: float,
        *,
        track: bool = False,
    ) -> None:
        self.nc = nc
        self.principal = agent_principal(agent)
        self.conversation_id = conversation_id
        self.subject = subjects.conversation_ephemeral(conversation_id)
        self.timeout = timeout
        self.track = track
        self.state = TurnState()
        self._key = subjects.kv_key_subject(subjects.KV_TURNS, conversation_id)
        self._timer: asyncio.TimerHandle | None = None
        self._refresh: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def _write_state(self) -> None:
        self._timer = None
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        try:
            if self.state.active:
                await self.nc.publish(self._key, jsonutil.dumps(self.state.to_json()))
                loop = asyncio.get_running_loop()
                self._refresh = loop.call_later(
                    KV_TTL_SECONDS / 4, self._write_soon, 0.0
                )  # a long tool call: the entry must outlive it
            else:
                await self.nc.publish(self._key, b"", headers={"KV-Operation": "DEL"})
        except nats.errors.Error as exc:  # the state is a convenience; the turn goes on
            logger.warning("turn state of %s not written: %r", self.conversation_id, exc)

    def _write_soon(self, delay: float = WRITE_INTERVAL_SECONDS) -> None:
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            task = loop.create_task(self._write_state())
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

        self._timer = loop.call_later(delay, fire)

    async def close(self) -> None:
        """The turn is over: its state goes away."""
        if not self.track:
            return
        for handle in (self._timer, self._refresh):
            if handle is not None:
                handle.cancel()
        self._timer = self._refresh = None
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self.state.clear()
        await self._write_state()

    async def send_message(self, data: dict[str, Any]) -> dict[str, Any]:
        req = CommandRequest(principal=self.principal, data=data)
        try:
            stored = await requests.request(
                self.nc,
                ROUTES[Event.MESSAGE_SEND].subject_for(data),  # the owner (docs/affinity.md)
                req.model_dump(mode="json", by_alias=True, exclude_none=True),
                budget=self.timeout,
                # As the gateways: "no responders" (the partition is moving to another
                # replica) or no answer is sent again; the clientMessageId makes it once.
                attempt_timeout=ATTEMPT_TIMEOUT_SECONDS,
                fallback=ROUTES[Event.MESSAGE_SEND].subject,  # no owner right now: any
            )
        except ParleyError as exc:  # refused, or no answer (timeout, no responders...)
            raise WriteError(f"message not stored: {exc.code.value}: {exc.message}") from exc
        return stored if isinstance(stored, dict) else {}

    async def publish(self, event: Event, data: dict[str, Any]) -> None:
        frame = envelopes.event_frame(event, data, conversation_id=self.conversation_id)
        if self.track:
            self.state.apply(event.value, data)
            if event is Event.MESSAGE_STREAM_DELTA:
                self._write_soon()
            else:  # the state first: a gateway reading it after this frame sees it
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                await self._write_state()
        try:
            await self.nc.publish(self.subject, jsonutil.dumps(frame))
        except nats.errors.Error as exc:  # ephemeral: the stored messages still tell the story
            logger.warning("publishing %s failed: %r", event.value, exc)


async def query(
    nc: NatsClient,
    subject: str,
    principal: Principal,
    data: dict[str, Any],
    seconds: float,
    *,
    fallback: str | None = None,
) -> Any:
    """A query to the conversation service; its ``data`` or ParleyError. ``fallback``: where
    a partition's write goes when its partition has no owner (docs/affinity.md)."""
    req = CommandRequest(principal=principal, data=data)
    body = req.model_dump(mode="json", by_alias=True, exclude_none=True)
    return await requests.request(nc, subject, body, budget=seconds, fallback=fallback)


async def routed(
    nc: NatsClient,
    route: Route | QueryRoute,
    principal: Principal,
    data: dict[str, Any],
    seconds: float,
) -> Any:
    """:func:`query` sent where ``route`` sends ``data``, as the gateway does: a request about
    one conversation to the owner of its partition (whose totals are read-your-writes,
    docs/affinity.md), and to the plain subject at once when no replica owns it right now."""
    to = route.subject_for(data)
    return await query(nc, to, principal, data, seconds, fallback=route.subject)
