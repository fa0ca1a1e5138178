"""The agent bridge on NATS: turns from JetStream, writes through the conversation service.

- Work: one durable pull consumer (``subjects.QUEUE_AGENT_BRIDGE``) on the work-queue stream
  ``subjects.STREAM_AGENT_TURNS`` shared by every replica: each turn goes to one replica,
  which sends ``in_progress()`` while it runs and acks when the answer is stored.
- Redelivery (the replica died or could not write): the new attempt reads the turn's
  messages so far (``parentMessageId`` = the user message). A final ``text``/``error``
  means done (ack, nothing written). Otherwise it resumes: tool calls without a result get
  a failed ``tool_result`` ("interrupted"), and the model continues from there. Writes of
  one attempt carry deterministic ``clientMessageId``s, so a retried write is deduplicated.
  After ``max_deliver`` attempts a visible ``error`` message ends the turn.
- ``message:stop``: ``subjects.AGENT_STOP`` (every replica, no queue group).
- ``tool:call``: request/reply on its route's subject (``routes.ROUTES``, relayed by gateways)
  and ``subjects.AGENT_TOOL_CALL``, queue group ``subjects.QUEUE_AGENT_BRIDGE``.
- Presence: KV ``subjects.KV_AGENTS`` key ``<agentId>.<instanceId>`` refreshed every TTL/3;
  ``agent:online``/``agent:offline`` to the agent's conversations.

The parts: ``turns.py`` (the turn pipeline), ``tool_calls.py``, ``presence.py``,
``nats_io.py`` (requests to the conversation service), ``bridge_state.py`` (what they
share); this module starts and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig

from parley_agent_bridge.backends import OpenAIChatBackend
from parley_agent_bridge.tool_calls import ToolCalls
from parley_agent_bridge.turns import Turns
from parley_contract import subjects
from parley_contract.events import Event
from parley_contract.routes import ROUTES
from parley_runtime import bus, jetstream
from parley_runtime.retry import retry
from parley_runtime.tasks import cancel_all

logger = logging.getLogger(__name__)

CONSUMER = subjects.QUEUE_AGENT_BRIDGE  # the durable consumer shared by every replica


class Bridge(Turns, ToolCalls):
    """One agent bridge replica: its parts (bridge_state.py) started and stopped in order."""

    async def start(self) -> None:
        s = self.settings
        for box in self.toolboxes.values():
            box.start()
        # Through a NATS outage or a JetStream without quorum: wait (not ready), never exit.
        self.nc = await bus.connect(s, "agent-bridge", drain_timeout=5)
        js = self.nc.jetstream()
        want = jetstream.replicas(self.nc, s)
        await retry("declaring the agent-turns stream", lambda: self._ensure_stream(js, want))
        self.kv = await retry(
            f"declaring KV bucket {subjects.KV_AGENTS}",
            lambda: jetstream.declare_kv(js, subjects.KV_AGENTS, want, ttl=s.presence_ttl_seconds),
        )
        # KV of running turns (NatsTurnIO writes it by plain publishes).
        await retry("declaring the turns bucket", lambda: jetstream.declare_turns_bucket(js, want))
        sub = await retry(
            "binding the turns consumer",
            lambda: js.pull_subscribe_bind(CONSUMER, subjects.STREAM_AGENT_TURNS),
        )
        self._pull = sub
        self._subs.append(await self.nc.subscribe(subjects.AGENT_STOP, cb=self._on_stop))
        # tool:call as relayed by gateways, and the bridge's own subject for services.
        for subject in (ROUTES[Event.TOOL_CALL].subject, subjects.AGENT_TOOL_CALL):
            self._subs.append(
                await self.nc.subscribe(
                    subject, queue=subjects.QUEUE_AGENT_BRIDGE, cb=self._on_tool_call
                )
            )
        # Give MCP servers a moment so the first turns see their tools (they keep trying).
        await asyncio.gather(*(b.wait_ready(s.tools_wait_seconds) for b in self.toolboxes.values()))
        try:
            await self._heartbeat()
        except (nats.errors.Error, nats.js.errors.Error) as exc:  # the presence loop retries
            logger.warning("agent presence not written yet: %r", exc)
        self._tasks = [
            asyncio.create_task(self._fetch_loop(sub), name="turns"),
            asyncio.create_task(self._presence_loop(), name="presence"),
            asyncio.create_task(self._announce_all(online=True), name="announce"),
        ]
        self.ready = True
        logger.info(
            "agent bridge %s ready: agents %s", self.instance_id, ", ".join(sorted(self.agents))
        )

    async def stop(self) -> None:
        self.ready = False
        self._closing.set()
        await cancel_all(self._tasks)
        if self._turn_tasks:
            # Running turns get a grace period; the rest are nak'ed and resumed elsewhere.
            _, pending = await asyncio.wait(
                set(self._turn_tasks), timeout=self.settings.drain_seconds
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await cancel_all(list(self._describing.values()))  # best effort: the next turn retries
        if self._tool_tasks:  # each is bounded by its MCP server's timeout
            await asyncio.wait(set(self._tool_tasks), timeout=self.settings.drain_seconds)
            for task in self._tool_tasks:
                task.cancel()
            if self._tool_tasks:
                await asyncio.wait(set(self._tool_tasks))
        await self._withdraw_presence()
        for box in self.toolboxes.values():
            await box.close()
        for backend in self.backends.values():
            if isinstance(backend, OpenAIChatBackend):
                await backend.aclose()
        await self.files.close()
        if self.nc is not None:
            # The pull subscription has no callback: drain() would wait for its queue (a
            # fetch's leftovers) until drain_timeout. Nothing there is acked, so drop it.
            if self._pull is not None:
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                    await self._pull.unsubscribe()
            with contextlib.suppress(nats.errors.Error):
                await self.nc.drain()

    async def _ensure_stream(self, js: Any, want: jetstream.Replicas) -> None:
        """The turns stream and the shared consumer, created idempotently by either side; an
        existing consumer with another ack wait or max deliver is updated to these (its
        replicas follow the stream's)."""
        await jetstream.declare_agent_turns_stream(js, want)
        config = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_seconds,
            max_deliver=self.settings.max_deliver,
            filter_subject=subjects.AGENT_TURN,
            max_ack_pending=10_000,
        )
        try:
            info = await js.consumer_info(subjects.STREAM_AGENT_TURNS, CONSUMER)
        except nats.js.errors.NotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.add_consumer(subjects.STREAM_AGENT_TURNS, config)
            return
        current = info.config
        if current.ack_wait != config.ack_wait or current.max_deliver != config.max_deliver:
            logger.info(
                "updating consumer %s: ack_wait %s -> %s s",
                CONSUMER,
                current.ack_wait,
                config.ack_wait,
            )
            try:
                await js.add_consumer(subjects.STREAM_AGENT_TURNS, config)  # create or update
            except nats.js.errors.BadRequestError as exc:
                logger.warning("consumer %s not updated: %s", CONSUMER, exc)
