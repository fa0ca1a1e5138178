"""No silent agent turns (issue 11): a turn whose agent has no live bridge replica fails
visibly within seconds instead of waiting forever in JetStream.

Each replica remembers the agent turns it published (``track``). Bridge replicas refresh
their key ``<agentId>.<instanceId>`` in the KV bucket ``subjects.KV_AGENTS`` every
``AGENT_LIVENESS_SECONDS``; this replica watches the bucket and knows, per agent, when a
replica last said it was alive. An agent that a bridge served since this replica started
("a bridge agent"; an external agent answers for itself and is never judged) and from which
no replica was heard for ``AGENT_DEAD_AFTER_SECONDS`` is offline: each tracked turn of it
that has no final answer in the log gets the stored notice of an offline agent (a ``system``
``error`` message, ``parentMessageId`` the user message, ``clientMessageId``
``turn-<messageId>-offline``: once per turn) and its conversation an ``agent:offline``
(``reason: "no-replica"``). The turn stays queued in JetStream: a bridge that comes back
answers it. A turn whose message already got the service's notice at send time (the agent
was known to be unserved then) is not tracked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.events import Event
from parley_contract.internal import AGENT_LIVENESS_SECONDS
from parley_contract.models import Message
from parley_conversation import domain
from parley_runtime.tasks import cancel_all, cancellable, every

logger = logging.getLogger(__name__)

AGENT_DEAD_AFTER_SECONDS = 3 * AGENT_LIVENESS_SECONDS  # three missed heartbeats
CHECK_SECONDS = 1.0
TURN_MEMORY_SECONDS = 600.0  # a tracked turn is forgotten after this (bridge turn timeout 300 s)

Store = Callable[[Message], Awaitable[Any]]
Answered = Callable[[str, str, int], Awaitable[bool]]
Publish = Callable[[str, bytes], Awaitable[None]]


@dataclass
class _Turn:
    conversation_id: str
    agent_id: str
    message_id: str
    seq: int
    at: float


class AgentWatch:
    def __init__(self, js: Any, store: Store, answered: Answered, publish: Publish) -> None:
        self._js = js
        self._store = store
        self._answered = answered
        self._publish = publish
        self._turns: dict[str, _Turn] = {}
        self._heard: dict[str, float] = {}  # agent id -> time.monotonic() of its last beat
        self._tasks: list[asyncio.Task[None]] = []
        self.failed = 0  # turns failed here (metrics, tests)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch(), name="agent-watch-kv"),
            asyncio.create_task(
                every(CHECK_SECONDS, self.check, what="agent watch check", log=logger),
                name="agent-watch-check",
            ),
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    def track(self, conversation_id: str, agent_id: str, message_id: str, seq: int) -> None:
        self._turns[message_id] = _Turn(
            conversation_id, agent_id, message_id, seq, time.monotonic()
        )

    # ------------------------------------------------------------ liveness

    async def _watch(self) -> None:
        """Follow the bridges' heartbeats (every put of ``<agentId>.<instanceId>``)."""
        delay = 0.5
        while True:
            try:
                # Requests (nats-py's wait_for can swallow a stop's cancel: cancellable).
                kv = await cancellable(self._js.key_value(subjects.KV_AGENTS))
                watcher = await cancellable(kv.watchall())
                delay = 0.5
                async for entry in watcher:
                    if entry is None or not entry.key:  # end of the initial values
                        continue
                    if entry.operation is not None:  # delete/purge: withdrawn, not a beat
                        continue
                    self._heard[entry.key.split(".", 1)[0]] = time.monotonic()
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                logger.debug("watching agent presence: %r; again in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def offline(self, agent_id: str, now: float) -> bool:
        heard = self._heard.get(agent_id)
        return heard is not None and now - heard > AGENT_DEAD_AFTER_SECONDS

    # ------------------------------------------------------------ turns

    async def check(self) -> None:
        now = time.monotonic()
        for mid, turn in list(self._turns.items()):
            if now - turn.at > TURN_MEMORY_SECONDS:
                self._turns.pop(mid, None)
                continue
            if not self.offline(turn.agent_id, now):
                continue
            self._turns.pop(mid, None)
            if await self._answered(turn.conversation_id, turn.message_id, turn.seq):
                continue
            await self._fail(turn)

    async def _fail(self, turn: _Turn) -> None:
        logger.warning(
            "agent %s has no live bridge replica: turn for %s noticed",
            turn.agent_id,
            turn.message_id,
        )
        # The notice of a message to an agent nobody serves (domain.agent_offline_message),
        # tied to this turn: stored once per turn; not an answer, so the turn stays queued
        # and a bridge that comes back answers it.
        notice = domain.agent_offline_message(turn.conversation_id, turn.agent_id)
        notice = notice.model_copy(
            update={
                "parent_message_id": turn.message_id,
                "client_message_id": f"turn-{turn.message_id}-offline"[:128],
                "metadata": {**(notice.metadata or {}), "reason": "no-replica"},
            }
        )
        await self._store(notice)
        self.failed += 1
        data = {
            "agentId": turn.agent_id,
            "conversationId": turn.conversation_id,
            "reason": "no-replica",
        }
        frame = envelopes.event_frame(
            Event.AGENT_OFFLINE, data, conversation_id=turn.conversation_id
        )
        await self._publish(
            subjects.conversation_events(turn.conversation_id), jsonutil.dumps(frame)
        )
