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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
)
from nats.js.kv import KeyValue
from pydantic import ValidationError

from parley_agent_bridge.backends import BackendError, ModelBackend, OpenAIChatBackend
from parley_agent_bridge.config import DEMO_AGENT_ID, AgentConfig, Settings
from parley_agent_bridge.demo import ScriptedDemoBackend
from parley_agent_bridge.files import model_parts
from parley_agent_bridge.housekeeping import describe
from parley_agent_bridge.metrics import Metrics
from parley_agent_bridge.tools import McpToolbox, ToolOutcome
from parley_agent_bridge.turn import Turn, TurnRequest, WriteError
from parley_contract import envelopes, jsonutil, subjects
from parley_contract.agent_events import AgentAvailability
from parley_contract.commands import ToolCallCommand
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import Event, PrincipalKind
from parley_contract.internal import (
    AGENT_LIVENESS_SECONDS,
    AgentStop,
    AgentTurn,
    CommandRequest,
    Principal,
)
from parley_contract.routes import ROUTES
from parley_contract.timeutil import now_iso
from parley_contract.turnstate import KV_TTL_SECONDS, WRITE_INTERVAL_SECONDS, TurnState
from parley_runtime import bus, jetstream, requests
from parley_runtime.filestore import open_store
from parley_runtime.retry import retry

logger = logging.getLogger(__name__)

CONSUMER = subjects.QUEUE_AGENT_BRIDGE  # the durable consumer shared by every replica
# Refusals of the conversation service that a retry cannot change.
_FINAL_ERRORS = frozenset({ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR})


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
                ROUTES[Event.MESSAGE_SEND].subject,
                req.model_dump(mode="json", by_alias=True, exclude_none=True),
                budget=self.timeout,
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
    nc: NatsClient, subject: str, principal: Principal, data: dict[str, Any], seconds: float
) -> Any:
    """A query to the conversation service; its ``data`` or ParleyError."""
    req = CommandRequest(principal=principal, data=data)
    body = req.model_dump(mode="json", by_alias=True, exclude_none=True)
    return await requests.request(nc, subject, body, budget=seconds)


class MeteredTools:
    """An agent's toolbox, counting calls in the metrics."""

    def __init__(self, box: McpToolbox, metrics: Metrics) -> None:
        self.box = box
        self.metrics = metrics

    def specs(self) -> list[dict[str, Any]]:
        return self.box.specs()

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        out = await self.box.call(name, arguments)
        self.metrics.tool_calls.labels(name, str(out.success).lower()).inc()
        return out


def make_backend(agent: AgentConfig, demo_delay: float) -> ModelBackend:
    if agent.backend == "demo":
        return ScriptedDemoBackend(delay=demo_delay)
    return OpenAIChatBackend(
        base_url=agent.base_url,
        model=agent.model,
        api_key=agent.api_key(),
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        timeout=agent.request_timeout_seconds,
        stream_usage=agent.stream_usage,
        extra_body=agent.extra_body,
    )


# tool:call requests answered at once per replica; more get SERVICE_UNAVAILABLE (retry).
MAX_TOOL_CALLS_IN_FLIGHT = 200


def tool_agent(principal: Principal, requested: str | None) -> str:
    """Whose tools a tool:call runs (docs/security.md): an agent its own only (naming
    another is FORBIDDEN); a service any agent's (the demo agent's when it names none);
    nobody else (users ask an agent in a conversation instead)."""
    if principal.kind is PrincipalKind.AGENT:
        if requested not in (None, principal.id):
            raise ParleyError(
                ErrorCode.FORBIDDEN,
                "an agent may call only its own tools",
                {"field": "agentId"},
            )
        return principal.id
    if principal.kind is PrincipalKind.SERVICE:
        return requested or DEMO_AGENT_ID
    raise ParleyError(ErrorCode.FORBIDDEN, "only agents and services may call tools")


class Bridge:
    def __init__(
        self,
        settings: Settings,
        agents: dict[str, AgentConfig],
        metrics: Metrics,
        *,
        demo_delay: float = 0.02,
    ) -> None:
        self.settings = settings
        self.agents = agents
        self.metrics = metrics
        self.instance_id = settings.instance_id
        self.backends = {a.id: make_backend(a, demo_delay) for a in agents.values()}
        self.toolboxes = {a.id: McpToolbox(a.mcp_servers) for a in agents.values()}
        # Attachment bytes (files.py); connections open on first use.
        self.files = open_store(settings.store_config())
        self.nc: NatsClient | None = None
        self.kv: KeyValue | None = None
        self.ready = False
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._turn_tasks: set[asyncio.Task[None]] = set()
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self._describing: dict[str, asyncio.Task[None]] = {}  # conversation → title/context
        self._running: dict[str, set[Turn]] = defaultdict(set)
        self._conv_locks: dict[str, asyncio.Lock] = {}
        self._conv_users: dict[str, int] = defaultdict(int)
        self._slots = asyncio.Semaphore(settings.max_concurrent_turns)
        self._announced: dict[str, set[str]] = defaultdict(set)  # agentId → conversations
        self._subs: list[Any] = []
        self._pull: Any = None

    # ------------------------------------------------------------------ lifecycle

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
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._turn_tasks:
            # Running turns get a grace period; the rest are nak'ed and resumed elsewhere.
            _, pending = await asyncio.wait(
                set(self._turn_tasks), timeout=self.settings.drain_seconds
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for task in list(self._describing.values()):  # best effort: the next turn retries
            task.cancel()
        if self._describing:
            await asyncio.wait(set(self._describing.values()))
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

    # ------------------------------------------------------------------ turns

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
        page = await query(
            self.nc,
            subjects.QUERY_MESSAGES_LIST,
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
            page = await query(
                self.nc,
                subjects.QUERY_MESSAGES_LIST,
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
        subject = {
            "get": subjects.QUERY_CONVERSATION_GET,
            "messages": subjects.QUERY_MESSAGES_LIST,
            "update": subjects.command(Event.CONVERSATION_UPDATE),
        }

        async def ask(what: str, data: dict[str, Any]) -> Any:
            return await query(nc, subject[what], principal, data, timeout)

        try:
            usage = await describe(
                agent, self.backends[agent.id], ask, conversation_id, self.settings.history_limit
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

    # ------------------------------------------------------------------ stop and tool:call

    async def _on_stop(self, msg: Msg) -> None:
        try:
            stop = AgentStop.model_validate_json(msg.data)
        except ValidationError as exc:
            logger.warning("malformed stop notice: %s", exc)
            return
        for turn in list(self._running.get(stop.conversation_id, ())):
            logger.info("stopping turn in %s (by %s)", stop.conversation_id, stop.principal.id)
            turn.stop("aborted")

    async def _on_tool_call(self, msg: Msg) -> None:
        # The subscription hands messages over one at a time: each call runs in a task of
        # its own, so one slow tool never holds up the other callers (bounded per replica).
        if len(self._tool_tasks) >= MAX_TOOL_CALLS_IN_FLIGHT:
            busy = envelopes.fail(
                ErrorCode.SERVICE_UNAVAILABLE,
                f"{MAX_TOOL_CALLS_IN_FLIGHT} tool calls are running on this bridge, retry",
            )
            if msg.reply:
                await msg.respond(jsonutil.dumps(busy))
            return
        task = asyncio.create_task(self._answer_tool_call(msg), name="tool:call")
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)

    async def _answer_tool_call(self, msg: Msg) -> None:
        try:
            reply = await self._tool_call(msg.data)
        except ParleyError as exc:
            reply = envelopes.fail_from(exc)
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(jsonutil.dumps(reply))

    async def _tool_call(self, raw: bytes) -> dict[str, Any]:
        req = ROUTES[Event.TOOL_CALL].decode(raw)  # principal and payload in one pass
        cmd = req.data
        assert isinstance(cmd, ToolCallCommand)
        agent_id = tool_agent(req.principal, cmd.agent_id)
        box = self.toolboxes.get(agent_id)
        if box is None or not box.has_tool(cmd.tool_name):
            raise ParleyError(
                ErrorCode.NOT_FOUND,
                f"agent {agent_id} has no tool {cmd.tool_name}",
                {"field": "toolName"},
            )
        out = await box.call(cmd.tool_name, cmd.arguments)
        self.metrics.tool_calls.labels(cmd.tool_name, str(out.success).lower()).inc()
        return envelopes.ok(
            {
                "toolName": cmd.tool_name,
                "result": out.result,
                "success": out.success,
                "error": out.error,
                "executionTime": out.execution_time_ms,
            }
        )

    # ------------------------------------------------------------------ presence

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
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat()
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                logger.warning("agent presence heartbeat failed: %r", exc)

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
        assert self.kv is not None
        try:
            return list(await self.kv.keys())
        except nats.js.errors.NoKeysError:
            return []
