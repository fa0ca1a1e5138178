"""Agent turns on the agent bridge: pulled from the shared JetStream consumer, one at a time
per conversation on a replica, run (turn.py) with in_progress() heartbeats, acked once
answered, retried or given up visibly; ``message:stop`` stops them; after an answered turn
the conversation's title and context (housekeeping.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from pydantic import ValidationError

from parley_agent_bridge.backends import BackendError
from parley_agent_bridge.config import AgentConfig
from parley_agent_bridge.files import model_parts
from parley_agent_bridge.housekeeping import describe
from parley_agent_bridge.nats_io import NatsTurnIO, agent_principal, routed
from parley_agent_bridge.presence import Presence
from parley_agent_bridge.tool_calls import MeteredTools
from parley_agent_bridge.turn import Turn, TurnRequest, WriteError
from parley_contract import subjects
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event
from parley_contract.internal import AgentStop, AgentTurn
from parley_contract.routes import QUERY_ROUTE, ROUTES, QueryRoute, Route

logger = logging.getLogger(__name__)

# Refusals of the conversation service that a retry cannot change.
_FINAL_ERRORS = frozenset({ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR})

# A turn's history and the title/context's reads and update (housekeeping.describe), each
# to the conversation's owner (nats_io.routed): what they read includes the turn's answer.
_HISTORY = QUERY_ROUTE[subjects.QUERY_MESSAGES_LIST]
_DESCRIBE: dict[str, Route | QueryRoute] = {
    "get": QUERY_ROUTE[subjects.QUERY_CONVERSATION_GET],
    "messages": _HISTORY,
    "update": ROUTES[Event.CONVERSATION_UPDATE],
}


class Turns(Presence):
    """Runs the turns this replica pulls (announcing the agent in a conversation it has not
    told yet: presence)."""

    async def _fetch_loop(self, sub: Any) -> None:
        backoff = 0.5
        while not self._closing.is_set():
            await self._slots.acquire()
            try:
                msgs = await sub.fetch(1, timeout=5)
            except nats.errors.TimeoutError:
                self._slots.release()
                continue
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                self._slots.release()
                logger.warning("fetching turns failed: %r; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            except BaseException:
                self._slots.release()
                raise
            backoff = 0.5
            for msg in msgs:
                task = asyncio.create_task(self._handle(msg))
                self._turn_tasks.add(task)
                task.add_done_callback(self._turn_done)

    def _turn_done(self, task: asyncio.Task[None]) -> None:
        self._turn_tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("turn task crashed", exc_info=task.exception())

    async def _handle(self, msg: Msg) -> None:
        try:
            work = AgentTurn.model_validate_json(msg.data)
        except ValidationError as exc:
            logger.warning("dropping malformed agent turn: %s", exc)
            await msg.term()
            return
        agent = self.agents.get(work.agent_id)
        if agent is None:
            # Not an agent of this bridge (an external agent answers for itself).
            logger.info("turn for agent %s: not configured here; skipped", work.agent_id)
            await msg.ack()
            return
        attempt = msg.metadata.num_delivered or 1
        if attempt > 1:
            self.metrics.redeliveries.inc()
        beat = asyncio.create_task(self._keep_alive(msg))
        cid = work.conversation_id
        lock = self._conv_locks.setdefault(cid, asyncio.Lock())  # one turn at a time here
        self._conv_users[cid] += 1
        try:
            async with lock:
                outcome = await self._run_turn(agent, work, attempt)
            self.metrics.turns.labels(agent.id, outcome).inc()
            await msg.ack()
            if outcome == "answered":
                self._describe_soon(agent, cid)
        except ParleyError as exc:
            if exc.code in _FINAL_ERRORS:
                # e.g. the agent is no longer assigned: retrying cannot help.
                logger.warning("turn for %s dropped: %s", work.message_id, exc)
                self.metrics.turns.labels(agent.id, "dropped").inc()
                await msg.term()
            else:
                await self._retry_or_give_up(msg, agent, work, attempt, exc)
        except (WriteError, nats.errors.Error) as exc:
            await self._retry_or_give_up(msg, agent, work, attempt, exc)
        except Exception as exc:  # the boundary: a bug must not stop a turn silently
            logger.exception("turn for %s crashed", work.message_id)
            await self._retry_or_give_up(msg, agent, work, attempt, exc)
        except asyncio.CancelledError:
            # Shutting down mid-turn: another replica resumes it.
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
            raise
        finally:
            beat.cancel()
            self._conv_users[cid] -= 1
            if self._conv_users[cid] <= 0:
                self._conv_users.pop(cid, None)
                self._conv_locks.pop(cid, None)

    async def _retry_or_give_up(
        self, msg: Msg, agent: AgentConfig, work: AgentTurn, attempt: int, exc: Exception
    ) -> None:
        logger.warning("turn for %s (attempt %d) failed: %s", work.message_id, attempt, exc)
        if attempt >= self.settings.max_deliver:
            self.metrics.turns.labels(agent.id, "failed").inc()
            await self._give_up(agent, work, attempt, str(exc) or type(exc).__name__)
            await msg.term()
        else:
            self.metrics.turns.labels(agent.id, "retry").inc()
            await msg.nak(delay=min(2.0 * attempt, 10.0))

    async def _keep_alive(self, msg: Msg) -> None:
        interval = max(self.settings.ack_wait_seconds / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    async def _history(
        self, agent: AgentConfig, work: AgentTurn
    ) -> tuple[list[dict[str, Any]], bool]:
        """Messages up to the user message plus this turn's own so far; answered already?"""
        assert self.nc is not None
        principal = agent_principal(agent)
        timeout = self.settings.request_timeout_seconds
        page = await routed(
            self.nc,
            _HISTORY,
            principal,
            {
                "conversationId": work.conversation_id,
                "beforeSeq": work.seq + 1,
                "limit": self.settings.history_limit,
            },
            timeout,
        )
        history = [m for m in (page or {}).get("items", []) if isinstance(m, dict)]
        # Always (not only on redelivery): a turn published twice must not be answered twice.
        after = work.seq
        own: list[dict[str, Any]] = []
        for _ in range(20):  # pages of 200
            page = await routed(
                self.nc,
                _HISTORY,
                principal,
                {"conversationId": work.conversation_id, "afterSeq": after, "limit": 200},
                timeout,
            )
            items = [m for m in (page or {}).get("items", []) if isinstance(m, dict)]
            own += [m for m in items if m.get("parentMessageId") == work.message_id]
            if not items or not page.get("hasMore"):
                break
            after = max(int(m.get("seq") or 0) for m in items)
        if any(
            m.get("role") == "assistant" and m.get("messageType") in ("text", "error") for m in own
        ):
            return history, True
        history += own
        return history, False

    async def _run_turn(self, agent: AgentConfig, work: AgentTurn, attempt: int) -> str:
        assert self.nc is not None
        history, done = await self._history(agent, work)
        if done:
            logger.info("turn for %s already answered; not repeated", work.message_id)
            return "already-answered"
        io = NatsTurnIO(
            self.nc,
            agent,
            work.conversation_id,
            self.settings.request_timeout_seconds,
            track=True,
        )
        turn = Turn(
            agent=agent,
            backend=self.backends[agent.id],
            tools=MeteredTools(self.toolboxes[agent.id], self.metrics),
            io=io,
            request=TurnRequest(work.conversation_id, work.message_id, work.seq, attempt),
            history=history,
            attachments=await model_parts(history, self.files, vision=agent.vision),
            max_steps=self.settings.max_steps,
            timeout=self.settings.turn_timeout_seconds,
        )
        if work.conversation_id not in self._announced[agent.id]:
            self._announced[agent.id].add(work.conversation_id)
            await self._announce(agent, {work.conversation_id}, online=True)
        running = self._running[work.conversation_id]
        running.add(turn)
        self.metrics.running.inc()
        started = time.monotonic()
        try:
            result = await turn.run()
        finally:
            await io.close()
            self.metrics.running.dec()
            running.discard(turn)
            if not running:
                self._running.pop(work.conversation_id, None)
        self.metrics.turn_seconds.labels(agent.id).observe(time.monotonic() - started)
        self.metrics.tokens.labels(agent.id, "prompt").inc(result.usage.prompt_tokens)
        self.metrics.tokens.labels(agent.id, "completion").inc(result.usage.completion_tokens)
        self.metrics.cost.labels(agent.id).inc(result.cost)
        return result.outcome

    def _describe_soon(self, agent: AgentConfig, conversation_id: str) -> None:
        """Title the conversation / refresh its context (housekeeping.py) after an answered
        turn, in the background; one at a time per conversation on this replica."""
        if (not agent.auto_title and agent.context_every_messages <= 0) or self._closing.is_set():
            return
        if conversation_id in self._describing:
            return
        task = asyncio.create_task(self._describe(agent, conversation_id), name="describe")
        self._describing[conversation_id] = task
        task.add_done_callback(lambda _t: self._describing.pop(conversation_id, None))

    async def _describe(self, agent: AgentConfig, conversation_id: str) -> None:
        assert self.nc is not None
        nc, principal = self.nc, agent_principal(agent)
        timeout = self.settings.request_timeout_seconds

        async def ask(what: str, data: dict[str, Any]) -> Any:
            return await routed(nc, _DESCRIBE[what], principal, data, timeout)

        try:
            async with self._describe_slots:  # model calls beside the turns: bounded too
                usage = await describe(
                    agent,
                    self.backends[agent.id],
                    ask,
                    conversation_id,
                    self.settings.history_limit,
                )
        except (ParleyError, BackendError, nats.errors.Error) as exc:
            logger.warning("title/context of %s by %s failed: %s", conversation_id, agent.id, exc)
            return
        except Exception:  # the boundary: a bug here must not go unseen
            logger.exception("title/context of %s by %s crashed", conversation_id, agent.id)
            return
        self.metrics.tokens.labels(agent.id, "prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels(agent.id, "completion").inc(usage.completion_tokens)
        self.metrics.cost.labels(agent.id).inc(
            agent.cost(usage.prompt_tokens, usage.completion_tokens)
        )

    async def _give_up(self, agent: AgentConfig, work: AgentTurn, attempt: int, error: str) -> None:
        """The last attempt failed too: say so in the conversation (best effort)."""
        assert self.nc is not None
        io = NatsTurnIO(self.nc, agent, work.conversation_id, self.settings.request_timeout_seconds)
        text = f"the agent could not answer after {attempt} attempts: {error}"
        with contextlib.suppress(WriteError, nats.errors.Error):
            await io.send_message(
                {
                    "conversationId": work.conversation_id,
                    "parentMessageId": work.message_id,
                    "clientMessageId": f"turn-{work.message_id}-failed"[:128],
                    "role": "assistant",
                    "messageType": "error",
                    "content": "Sorry, I could not answer: " + text,
                    "error": text,
                    "finishReason": "error",
                }
            )

    async def _on_stop(self, msg: Msg) -> None:
        try:
            stop = AgentStop.model_validate_json(msg.data)
        except ValidationError as exc:
            logger.warning("malformed stop notice: %s", exc)
            return
        for turn in list(self._running.get(stop.conversation_id, ())):
            logger.info("stopping turn in %s (by %s)", stop.conversation_id, stop.principal.id)
            turn.stop("aborted")
