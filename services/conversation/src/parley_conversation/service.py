"""The conversation service: FastStream subscribers on NATS (queue group ``conversation``).

Handlers stay thin: parse the request, call the domain, hand durable writes to the
:class:`~parley_conversation.sequencer.Sequencer`, reply with an envelope. Every reply is
``envelopes.ok(data)`` or ``envelopes.fail(code, message, details)``; nothing a client sends
can make a handler raise.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from faststream.message import StreamMessage
from nats.errors import Error as NatsError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pymongo.errors import ConnectionFailure, PyMongoError

from parley_contract import commands, envelopes, jsonutil, subjects
from parley_contract.agents import LOOKUP_TIMEOUT_SECONDS, AgentDirectory
from parley_contract.commands import (
    ConversationCreate,
    ConversationDelete,
    ConversationJoin,
    ConversationRead,
    ConversationUpdate,
    MessageDelete,
    MessageEdit,
    MessageReact,
    MessageSend,
    MessageStop,
    TaskCreate,
)
from parley_contract.errors import ErrorCode, ParleyError, forbidden
from parley_contract.events import Event, PrincipalKind, may_send
from parley_contract.ids import SafeId, check_id, is_valid_id
from parley_contract.internal import (
    AgentStop,
    AgentTurn,
    CommandRequest,
    EventsSinceRequest,
    Principal,
)
from parley_contract.jsonutil import model_json
from parley_contract.limits import INT64_MAX
from parley_contract.models import (
    Conversation,
    ConversationStatus,
    Message,
    Participant,
    Role,
)
from parley_contract.timeutil import iso
from parley_contract.turnstate import TurnState
from parley_conversation import domain, roles, search
from parley_conversation.agent_watch import AgentWatch
from parley_conversation.attachments import Attachments
from parley_conversation.broker import make_broker
from parley_conversation.cursors import CursorStore
from parley_conversation.entries import MessageTotals
from parley_conversation.epochs import HighWaterMarks
from parley_conversation.idempotency import KEYED_EVENTS, command_key, log_key, with_key
from parley_conversation.legacy import fold_legacy_event_log
from parley_conversation.outbox import COLLECTION as OUTBOX_COLLECTION
from parley_conversation.outbox import TurnOutbox
from parley_conversation.receipts import Receipts
from parley_conversation.search import SearchQuery
from parley_conversation.sequencer import Sequencer
from parley_conversation.settings import Settings
from parley_conversation.store import MongoStore
from parley_runtime import jetstream
from parley_runtime.retry import retry

logger = logging.getLogger(__name__)

HANDLED_COMMANDS: tuple[Event, ...] = (
    Event.CONVERSATION_CREATE,
    Event.CONVERSATION_JOIN,
    Event.CONVERSATION_UPDATE,
    Event.CONVERSATION_DELETE,
    Event.MESSAGE_SEND,
    Event.MESSAGE_EDIT,
    Event.MESSAGE_DELETE,
    Event.MESSAGE_REACT,
    Event.MESSAGE_STOP,
    Event.TASK_CREATE,
    Event.CONVERSATION_READ,
)
# conversation:leave is not here: it is watching, not membership, and the gateway answers it
# (unsubscribes the connection). Quitting is conversation:update removing oneself.
COMMAND_BY_SUBJECT: dict[str, Event] = {subjects.command(e): e for e in HANDLED_COMMANDS}
UPDATE_RETRIES = 50  # optimistic conversation updates under contention
REPLY_ENVELOPE_BYTES = 4096  # room for the reply envelope around a page's items


# ---------------------------------------------------------------- query payloads


class QueryData(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ListConversationsQuery(QueryData):
    status: ConversationStatus | None = None
    cursor: str | None = Field(default=None, max_length=512)
    limit: int = Field(default=20, ge=1, le=200)


class GetConversationQuery(QueryData):
    conversation_id: SafeId


class ListMessagesQuery(QueryData):
    conversation_id: SafeId
    after_seq: int | None = Field(default=None, ge=0, le=INT64_MAX)
    before_seq: int | None = Field(default=None, ge=1, le=INT64_MAX)
    limit: int = Field(default=50, ge=1, le=500)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "parley_conversation_requests_total",
            "Requests handled, by operation and outcome (ok or error code).",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "parley_conversation_request_seconds",
            "Time from request received to reply sent.",
            ["operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.batch = Histogram(
            "parley_conversation_batch_size",
            "Durable writes committed together (group commit).",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "parley_conversation_in_flight",
            "Requests being handled right now.",
            registry=self.registry,
        )
        self.projection_failures = Counter(
            "parley_conversation_projection_failures_total",
            "Batches whose messages or totals could not be written after their events were.",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "parley_conversation_publish_failures_total",
            "Frames stored but not published live (gateways gap-fill them).",
            registry=self.registry,
        )
        self.agent_turn_failures = Counter(
            "parley_conversation_agent_turn_publish_failures_total",
            "Attempts to publish an agent turn that JetStream did not acknowledge (retried).",
            registry=self.registry,
        )


def _parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    # Query parameters the HTTP caller left out may arrive as null: same as absent.
    data = {k: v for k, v in data.items() if v is not None}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise commands.validation_error(exc) from None


class ConversationService:
    """One replica: a FastStream NATS broker, the store and the group-commit sequencer."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = MongoStore(
            settings.mongodb_url,
            settings.mongodb_database,
            write_concern=settings.write_concern,
            client_options=settings.mongo_options(),
        )
        self.broker = make_broker(settings, graceful_timeout=settings.drain_seconds)
        self.sequencer = Sequencer(
            self.store,
            self._publish,
            self._after_store,
            max_batch=settings.max_batch,
            on_batch=self.metrics.batch.observe,
            on_projection_failure=self.metrics.projection_failures.inc,
            totals_interval=settings.totals_interval_seconds,
            max_wait=settings.max_wait_seconds,
            on_committed=self._note_mark,
        )
        self.outbox = TurnOutbox(
            self.store.messages.database[OUTBOX_COLLECTION],
            self._jetstream,
            on_failure=self.metrics.agent_turn_failures.inc,
        )
        self.cursors = CursorStore(self.store.messages.database, self.store.messages)
        self.receipts = Receipts(
            self.cursors, self.store.last_seq, self._publish, settings.receipts_window_seconds
        )
        self.ready = False
        self._agents: AgentDirectory | None = None
        self._started = False
        self.agent_watch: AgentWatch | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._subscribers: list[Any] = []
        self.attachments = Attachments(
            self.store.attachments,
            lambda p, cid: self._conversation(p, cid, totals=False),
            url_ttl_seconds=settings.attachments_url_ttl_seconds,
        )
        self._register()

    # ------------------------------------------------------------ wiring

    def _register(self) -> None:
        n = self.settings.max_concurrency
        q = subjects.QUEUE_CONVERSATION
        # One subscription per handled command (not parley.cmd.>: other services answer
        # other commands there, e.g. the agent bridge answers tool:call).
        routes: list[tuple[str, str, str]] = [
            (subjects.command(e), e.value, f"Command {e.value}") for e in HANDLED_COMMANDS
        ]
        routes += [
            (subjects.INTERNAL_MESSAGE_APPEND, "internal.message.append", "Service writes"),
            (subjects.QUERY_CONVERSATIONS_LIST, "query.conversations.list", "My conversations"),
            (subjects.QUERY_CONVERSATION_GET, "query.conversation.get", "One conversation"),
            (subjects.QUERY_MESSAGES_LIST, "query.messages.list", "Messages by seq"),
            (subjects.QUERY_EVENTS_SINCE, "query.events.since", "Durable events since a seq"),
            (subjects.QUERY_SEARCH, "query.search", "Search my conversations"),
            (subjects.ATTACHMENT_REGISTER, "attachment.register", "Record an upload"),
            (subjects.QUERY_ATTACHMENT_GET, "query.attachment.get", "May one read a file"),
        ]
        for subject, op, title in routes:
            sub = self.broker.subscriber(
                subject,
                queue=q,
                max_workers=n,
                title=f"{title} ({subject})",
                decoder=_raw_body,
            )
            sub(self._make_handler(subject, op))
            self._subscribers.append(sub)
        # Delivery reports from the gateways: published, no reply (receipts.py).
        sub = self.broker.subscriber(
            subjects.INTERNAL_DELIVERY,
            queue=q,
            max_workers=n,
            title=f"Delivery reports ({subjects.INTERNAL_DELIVERY})",
            decoder=_raw_body,
        )
        sub(self._delivery_report)
        self._subscribers.append(sub)

    async def _delivery_report(self, body: bytes) -> None:
        try:
            await self.receipts.delivery_report(body)
        except PyMongoError:
            logger.warning("delivery report not applied (store)", exc_info=True)

    def _make_handler(self, subject: str, op: str) -> Callable[[bytes], Awaitable[bytes]]:
        # The subject is bound here and the body arrives raw (see _raw_body): the handler
        # needs no FastStream context injection, which resolves in a worker thread per message.
        async def handler(body: bytes) -> bytes:
            return await self.handle(subject, body)

        handler.__name__ = f"handle_{op.replace('.', '_').replace(':', '_')}"
        return handler

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # Not reachable yet: wait; anything else is fatal.
        await retry("opening the store", self._open_store, transient=(ConnectionFailure,))
        # Connected only: the subscriptions start last, once this replica can serve (marks,
        # agent watch): a request routed here meanwhile would wait for it. Through a NATS
        # outage or a JetStream without quorum this waits (not ready), never gives up.
        await retry("connecting to NATS", self.broker.connect)
        nc = self.broker.connection
        want = jetstream.replicas(nc, self.settings)
        js = nc.jetstream()
        await retry("declaring the agent-turns stream", lambda: self._ensure_stream(want))
        marks = HighWaterMarks(nc)
        await retry("opening the high-water marks", lambda: marks.open(want))
        self.store.marks = marks
        self.agent_watch = AgentWatch(
            js,
            self._store_agent_failure,
            self.store.turn_answered,
            self._publish,
        )
        self.agent_watch.start()
        await self.outbox.start()
        await self.broker.start()
        self._started = True
        self.ready = True
        logger.info("conversation service %s ready", self.settings.instance_id)

    async def _open_store(self) -> None:
        await self.store.init()
        await self.cursors.init()
        await self.attachments.init()
        # Before any request: the old log's seqs must be in place before new writes.
        await fold_legacy_event_log(self.store)

    async def _note_mark(self, conversation_id: str, epoch: int, seq: int) -> None:
        if self.store.marks is not None:
            await self.store.marks.note(conversation_id, epoch, seq)

    async def _store_agent_failure(self, message: Message) -> None:
        await self.sequencer.send(Principal(id="parley", kind=PrincipalKind.SERVICE), message)

    async def _ensure_stream(self, want: jetstream.Replicas) -> None:
        js = self.broker.connection.jetstream()
        await jetstream.declare_agent_turns_stream(js, want)
        await jetstream.declare_turns_bucket(js, want)  # the queued state of new turns

    async def stop(self) -> None:
        """Stop taking requests, finish the in-flight batches and replies, then disconnect."""
        self.ready = False
        if not self._started:  # stopped while starting (waiting for NATS or the store)
            if self.agent_watch is not None:
                await self.agent_watch.stop()
            await self.broker.stop()
            await self.store.close()
            return
        for sub in self._subscribers:
            nats_sub = getattr(sub, "subscription", None)
            if nats_sub is not None:
                # drain: the server stops routing to this replica (the others take the work),
                # and the requests already received are still handed to the handlers.
                try:
                    await nats_sub.drain()
                except NatsError as exc:
                    logger.warning("could not drain a subscription: %s", exc)
                sub.subscription = None  # FastStream would unsubscribe it a second time
        if self.agent_watch is not None:
            await self.agent_watch.stop()
        await self.outbox.stop()
        await self.receipts.stop()
        try:
            await asyncio.wait_for(self._drain(), timeout=self.settings.drain_seconds)
        except TimeoutError:
            logger.warning("drain timed out with %d requests in flight", self._in_flight)
        await self.broker.stop()
        await self.store.close()
        self._started = False

    async def _drain(self) -> None:
        # Received requests may still sit in FastStream's queue for a tick before their
        # handler starts: wait until nothing is in flight for a few consecutive checks.
        quiet = 0
        while quiet < 3:
            if self._in_flight == 0:
                quiet += 1
            else:
                quiet = 0
                await self._idle.wait()
            await asyncio.sleep(0.01)
        await self.sequencer.drain()

    async def check_ready(self) -> bool:
        if not self.ready:
            return False
        try:
            connected = bool(self.broker.connection.is_connected)
            return connected and await self.store.ping()
        except (PyMongoError, AttributeError):
            return False

    # ------------------------------------------------------------ dispatch

    async def handle(self, subject: str, body: bytes) -> bytes:
        """One request → one reply envelope (bytes). Never raises."""
        started = time.perf_counter()
        self._in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.inc()
        op = subject
        try:
            try:
                op, data = await self._dispatch(subject, body)
                envelope = envelopes.ok(data)
                outcome = "ok"
            except ParleyError as exc:
                envelope = envelopes.fail_from(exc)
                outcome = exc.code.value
            except PyMongoError:
                logger.exception("store error on %s", subject)
                envelope = envelopes.fail(
                    ErrorCode.SERVICE_UNAVAILABLE, "the store is unavailable, retry"
                )
                outcome = ErrorCode.SERVICE_UNAVAILABLE.value
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("unexpected error on %s", subject)
                envelope = envelopes.fail(ErrorCode.INTERNAL_ERROR, "internal error")
                outcome = ErrorCode.INTERNAL_ERROR.value
            self.metrics.requests.labels(op, outcome).inc()
            self.metrics.latency.labels(op).observe(time.perf_counter() - started)
            return jsonutil.dumps(envelope)
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()
            if self._in_flight == 0:
                self._idle.set()

    async def _dispatch(self, subject: str, body: bytes) -> tuple[str, Any]:
        if len(body) > self.settings.max_request_bytes:
            raise ParleyError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"request larger than {self.settings.max_request_bytes} bytes",
            )
        if subject == subjects.QUERY_EVENTS_SINCE:
            try:
                since = EventsSinceRequest.model_validate_json(body)
            except ValidationError as exc:
                raise commands.validation_error(exc) from None
            return "query.events.since", await self.events_since(since)
        try:
            req = CommandRequest.model_validate_json(body)
        except ValidationError as exc:
            raise commands.validation_error(exc) from None
        p, data = req.principal, req.data
        if subject == subjects.INTERNAL_MESSAGE_APPEND:
            return Event.MESSAGE_SEND.value, await self.message_send(p, data)
        if subject == subjects.QUERY_CONVERSATIONS_LIST:
            return "query.conversations.list", await self._q_list(p, data)
        if subject == subjects.QUERY_CONVERSATION_GET:
            return "query.conversation.get", await self._q_get(p, data)
        if subject == subjects.QUERY_MESSAGES_LIST:
            return "query.messages.list", await self._q_messages(p, data)
        if subject == subjects.QUERY_SEARCH:
            return "query.search", await search.search(self.store, p, _parse(SearchQuery, data))
        if subject == subjects.ATTACHMENT_REGISTER:
            return "attachment.register", await self.attachments.register(p, data)
        if subject == subjects.QUERY_ATTACHMENT_GET:
            return "query.attachment.get", await self.attachments.get(p, data)
        event = COMMAND_BY_SUBJECT.get(subject)
        if event is None:
            raise ParleyError(
                ErrorCode.UNKNOWN_EVENT, "this command is not handled by the conversation service"
            )
        if p.kind not in (PrincipalKind.SERVICE,) and not _may_send(p.kind, event):
            raise ParleyError(ErrorCode.FORBIDDEN, f"a {p.kind.value} may not send {event.value}")
        handler = self._commands[event]
        key = req.idempotency_key
        if key is None:
            return event.value, await handler(self, p, data)
        data = with_key(event, p.id, key, data)
        if event not in KEYED_EVENTS:
            return event.value, await handler(self, p, data)
        return event.value, await self._keyed(handler, p, data, log_key(p.id, key))

    async def _keyed(
        self,
        handler: Callable[[ConversationService, Principal, dict[str, Any]], Awaitable[Any]],
        p: Principal,
        data: dict[str, Any],
        key: str,
    ) -> Any:
        """A command with an idempotency key, applied once (see parley_conversation.idempotency):
        a repeat is answered with the data of the durable event its first run stored."""
        cid = data.get("conversationId")
        if not is_valid_id(cid):
            return await handler(self, p, data)  # the handler answers the bad id
        assert isinstance(cid, str)
        earlier = await self.store.frames_by_client_ids({cid: [key]})
        if earlier:
            return next(iter(earlier.values()))["data"]
        token = command_key.set(key)
        try:
            return await handler(self, p, data)
        except ParleyError:
            # The first run did it (a delete of a deleted message now fails): its answer.
            earlier = await self.store.frames_by_client_ids({cid: [key]})
            if earlier:
                return next(iter(earlier.values()))["data"]
            raise
        finally:
            command_key.reset(token)

    # ------------------------------------------------------------ helpers

    async def _publish(self, subject: str, payload: bytes) -> None:
        """Core NATS publish. A failure never fails a stored write: the frame is in the event
        log, and gateways fill the gap from QUERY_EVENTS_SINCE when the next one arrives."""
        payload = self.attachments.sign_payload(payload)  # urls signed as they go out
        try:
            await self.broker.connection.publish(subject, payload)
        except NatsError as exc:
            self.metrics.publish_failures.inc()
            logger.warning("could not publish on %s: %r", subject, exc)

    async def _after_store(self, conv: Conversation, stored: list[Message]) -> None:
        """Agent turns for user messages in a conversation with an agent (JetStream, dedup)."""
        self.receipts.activity(conv, stored)
        if not conv.agent_id:
            return
        # A user wrote to an agent nobody serves now: a notice instead of "queued".
        noticed = False
        if any(m.role is Role.USER for m in stored):
            noticed = await self._agent_offline_notice(conv, conv.agent_id)

        async def one(m: Message) -> None:
            assert conv.agent_id is not None and m.seq is not None
            if not noticed:
                await self._turn_queued(conv, conv.agent_id, m.id)
            turn = AgentTurn(
                conversation_id=conv.id, agent_id=conv.agent_id, message_id=m.id, seq=m.seq
            )
            if self.agent_watch is not None and not noticed:
                self.agent_watch.track(conv.id, conv.agent_id, m.id, m.seq)
            # Through the outbox (outbox.py): retried until JetStream acknowledges it.
            await self.outbox.send(turn)

        await asyncio.gather(*(one(m) for m in stored if m.role is Role.USER))

    def _jetstream(self) -> Any:
        return self.broker.connection.jetstream()  # the connection exists once started

    def _directory(self) -> AgentDirectory:
        if self._agents is None:
            self._agents = AgentDirectory(self.broker.connection.jetstream())
        return self._agents

    async def _served(self, agent_id: str, *, cached: bool) -> bool | None:
        """Whether someone serves the agent; None when the KV could not tell."""
        try:
            return await asyncio.wait_for(
                self._directory().is_served(agent_id, cached=cached), LOOKUP_TIMEOUT_SECONDS
            )
        except (TimeoutError, NatsError) as exc:
            logger.warning("could not look up agent %s: %r", agent_id, exc)
            return None

    async def _check_agent(self, agent_id: str) -> None:
        """NOT_FOUND for an agentId that no agent bridge serves and no agent connection is."""
        if await self._served(agent_id, cached=False) is False:
            raise ParleyError(
                ErrorCode.NOT_FOUND,
                f"no agent '{agent_id}' is available (GET /v1/agents lists them)",
                {"field": "agentId"},
            )

    async def _turn_queued(self, conv: Conversation, agent_id: str, message_id: str) -> None:
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
        await self._publish(
            subjects.kv_key_subject(subjects.KV_TURNS, conv.id), jsonutil.dumps(state.to_json())
        )
        frame = envelopes.event_frame(Event.AGENT_THINKING, data, conversation_id=conv.id)
        await self._publish(subjects.conversation_events(conv.id), jsonutil.dumps(frame))

    async def _agent_offline_notice(self, conv: Conversation, agent_id: str) -> bool:
        """A user wrote to an agent that went away: say so (ephemeral agent:offline and a
        stored error notice) instead of leaving the message unanswered in silence. The turn
        stays queued: a bridge that serves the agent again answers it."""
        if await self._served(agent_id, cached=True) is not False:
            return False
        data = {"agentId": agent_id, "conversationId": conv.id, "reason": "not-served"}
        frame = envelopes.event_frame(Event.AGENT_OFFLINE, data, conversation_id=conv.id)
        await self._publish(subjects.conversation_events(conv.id), jsonutil.dumps(frame))
        notice = domain.agent_offline_message(conv.id, agent_id)
        try:
            await self.sequencer.send(Principal(id="parley", kind=PrincipalKind.SERVICE), notice)
        except ParleyError as exc:
            logger.warning("agent-offline notice in %s not stored: %s", conv.id, exc)
        return True

    async def _conversation(
        self, p: Principal, conversation_id: str, *, totals: bool = True
    ) -> Conversation:
        """The conversation, if ``p`` may see it; ``totals=False`` when only authorizing
        (one store read instead of two: the totals live in their own collection)."""
        conv = await self.store.get_conversation(conversation_id, with_totals=totals)
        return domain.authorize(conv, p)

    async def _notify(self, participants: list[Participant], frame: dict[str, Any]) -> None:
        """The frame to every connection of each participant: by ``(kind, id)``, so the
        user ``x`` never gets what is addressed to the agent ``x``."""
        payload = jsonutil.dumps(frame)
        for kind, pid in dict.fromkeys(x.principal for x in participants):
            if pid:
                await self._publish(subjects.principal_events(kind, pid), payload)

    async def _append_conversation_event(
        self, event: Event, conv: Conversation
    ) -> tuple[Conversation, dict[str, Any]]:
        """A durable conversation:* event whose data is the conversation at that seq."""
        holder: dict[str, Conversation] = {}

        def build(seq: int) -> Any:
            holder["conv"] = conv.model_copy(update={"last_seq": seq})
            return model_json(holder["conv"])

        res = await self.sequencer.append(conv.id, event, build, key=command_key.get())
        if res.duplicate:  # a retry racing its first run: the stored one
            return Conversation.model_validate(res.frame["data"]), res.frame
        return holder["conv"], res.frame

    # ------------------------------------------------------------ commands

    async def conversation_create(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.CONVERSATION_CREATE, data)
        assert isinstance(cmd, ConversationCreate)
        conv = domain.new_conversation(p, cmd)
        await self.cursors.remember(p.kind, p.id, p.name)
        if cmd.agent_id:
            await self._check_agent(cmd.agent_id)
        try:
            await self.store.insert_conversation(conv)
        except ParleyError as exc:
            # A retry (same idempotency key) of a create whose first run stored the
            # conversation but died before its event: finish it.
            if exc.code is not ErrorCode.CONFLICT or command_key.get() is None:
                raise
            existing = await self.store.get_conversation(conv.id, with_totals=False)
            if existing is None or existing.created_by != p.id:
                raise
            conv = existing
        conv, frame = await self._append_conversation_event(Event.CONVERSATION_CREATED, conv)
        await self._notify(conv.participants, frame)
        return model_json(conv)

    async def conversation_join(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.CONVERSATION_JOIN, data)
        assert isinstance(cmd, ConversationJoin)
        await self.sequencer.settle_totals()
        # lastSeq before authorizing: a removal the authorization did not see yet has a seq
        # above it, so the gateway replays or delivers it and evicts this joiner.
        last = await self.store.last_seq(cmd.conversation_id)
        conv = await self._conversation(p, cmd.conversation_id)
        epoch = await self.store.epoch_of(cmd.conversation_id)
        conv = conv.model_copy(update={"last_seq": max(last, conv.last_seq)})
        wire = model_json(conv)
        await self.cursors.remember(p.kind, p.id, p.name)
        await self.receipts.add_names([wire])
        receipts = await self.receipts.join_info(p, conv.id)
        return {"conversation": wire, "lastSeq": last, "epoch": epoch, **receipts}

    async def conversation_read(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.CONVERSATION_READ, data)
        assert isinstance(cmd, ConversationRead)
        conv = await self._conversation(p, cmd.conversation_id, totals=False)
        return await self.receipts.read(p, conv, cmd.seq)

    async def conversation_update(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.CONVERSATION_UPDATE, data)
        assert isinstance(cmd, ConversationUpdate)
        for _ in range(UPDATE_RETRIES):
            conv = await self._conversation(p, cmd.conversation_id)
            change = domain.apply_update(conv, p, cmd)
            role = roles.role_of(conv, p)
            for action in sorted(roles.update_actions(conv, change.conversation, p)):
                roles.require(role, action)
            if not change.changed:
                await self._add_call_cost(conv.id, cmd)
                return model_json(conv)
            if change.agent_switched and change.conversation.agent_id:
                await self._check_agent(change.conversation.agent_id)
            if await self.store.update_conversation(conv, change.conversation):
                break
            await _backoff()
        else:
            raise ParleyError(ErrorCode.CONFLICT, "the conversation is changing too fast, retry")
        new, frame = await self._append_conversation_event(
            Event.CONVERSATION_UPDATED, domain.with_call_cost(change.conversation, cmd)
        )
        await self._add_call_cost(conv.id, cmd)
        if change.added:
            await self._notify(change.added, frame)
        if change.agent_switched:
            system = domain.agent_switch_message(
                conv.id, change.previous_agent_id, new.agent_id, p.id
            )
            service = Principal(id=p.id, kind=PrincipalKind.SERVICE, name=p.name)
            res = await self.sequencer.send(service, system)
            new = new.model_copy(update={"last_seq": max(new.last_seq, res.seq)})
        return model_json(new)

    async def _add_call_cost(self, conversation_id: str, cmd: ConversationUpdate) -> None:
        """An agent's model call behind an update (title, context) counts in the totals."""
        tokens, cost = domain.call_cost(cmd)
        if tokens or cost:
            await self.store.add_totals({conversation_id: MessageTotals(tokens=tokens, cost=cost)})

    async def conversation_delete(self, p: Principal, data: dict[str, Any]) -> Any:
        """Soft delete (creator only): isActive false + deletedAt, a durable
        conversation:deleted to the conversation and to each participant, the running agent
        turn stopped. Afterwards reads, joins and writes answer NOT_FOUND and lists skip it."""
        cmd = commands.parse_payload(Event.CONVERSATION_DELETE, data)
        assert isinstance(cmd, ConversationDelete)
        for _ in range(UPDATE_RETRIES):
            conv = await self._conversation(p, cmd.conversation_id)
            if conv.deleted_at is not None:  # a service deleting twice
                raise domain.deleted_error(conv.id)
            roles.require(roles.role_of(conv, p), roles.Action.DELETE)  # the role matrix
            new = domain.delete_conversation(conv, p)
            if await self.store.update_conversation(conv, new):
                break
            await _backoff()
        else:
            raise ParleyError(ErrorCode.CONFLICT, "the conversation is changing too fast, retry")
        new, frame = await self._append_conversation_event(Event.CONVERSATION_DELETED, new)
        await self.attachments.conversation_deleted(new.id)
        await self._notify([x for x in new.participants if x.active], frame)
        stop = AgentStop(conversation_id=new.id, principal=p)
        await self._publish(
            subjects.AGENT_STOP, jsonutil.dumps(stop.model_dump(by_alias=True, mode="json"))
        )
        return model_json(new)

    async def message_send(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.MESSAGE_SEND, data)
        assert isinstance(cmd, MessageSend)
        msg = domain.new_message(p, cmd)
        if msg.role in (Role.ASSISTANT, Role.TOOL) and msg.agent_id is None:
            conv = await self._conversation(p, cmd.conversation_id, totals=False)
            if conv.agent_id:
                msg = msg.model_copy(update={"agent_id": conv.agent_id})
        if cmd.attachments:
            await self._conversation(p, cmd.conversation_id, totals=False)
            files = await self.attachments.resolve(p, cmd.conversation_id, cmd.attachments, msg.id)
            msg = msg.model_copy(update={"attachments": files})
        res = await self.sequencer.send(p, msg)
        return self.attachments.sign(res.message)

    async def _message_for_change(
        self, p: Principal, cid: str, mid: str
    ) -> tuple[roles.ConversationRole | None, Message]:
        conv = await self._conversation(p, cid, totals=False)
        msg = await self.store.get_message(cid, mid)
        if msg is None:
            raise ParleyError(ErrorCode.NOT_FOUND, "no such message in this conversation")
        return roles.role_of(conv, p), msg

    async def _publish_message_event(self, event: Event, msg: Message) -> Any:
        data = model_json(msg)
        res = await self.sequencer.append(
            msg.conversation_id, event, lambda _seq: data, key=command_key.get()
        )
        return self.attachments.sign(res.frame["data"] if res.duplicate else data)

    async def message_edit(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.MESSAGE_EDIT, data)
        assert isinstance(cmd, MessageEdit)
        role, msg = await self._message_for_change(p, cmd.conversation_id, cmd.message_id)
        roles.require(role, roles.message_action(msg, p, delete=False))
        new = domain.edited(msg, p, cmd.content, moderator=True)
        stored = await self.store.update_message(
            msg.conversation_id,
            msg.id,
            {
                "content": new.content,
                "editedAt": new.edited_at,
                "updatedAt": new.updated_at,
                "updatedBy": new.updated_by,
            },
        )
        if stored is None:
            raise ParleyError(ErrorCode.CONFLICT, "the message was deleted")
        return await self._publish_message_event(Event.MESSAGE_UPDATED, stored)

    async def message_delete(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.MESSAGE_DELETE, data)
        assert isinstance(cmd, MessageDelete)
        role, msg = await self._message_for_change(p, cmd.conversation_id, cmd.message_id)
        roles.require(role, roles.message_action(msg, p, delete=True))
        new = domain.deleted(msg, p, moderator=True)
        stored = await self.store.update_message(
            msg.conversation_id,
            msg.id,
            {
                "content": "",
                "deletedAt": new.deleted_at,
                "isActive": False,
                "updatedAt": new.updated_at,
                "updatedBy": new.updated_by,
            },
        )
        if stored is None:
            raise ParleyError(ErrorCode.CONFLICT, "the message was already deleted")
        await self.attachments.message_deleted(msg.id, msg.attachments or [])
        return await self._publish_message_event(Event.MESSAGE_DELETED, stored)

    async def message_react(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.MESSAGE_REACT, data)
        assert isinstance(cmd, MessageReact)
        emoji = domain.check_emoji(cmd.emoji)
        role, _msg = await self._message_for_change(p, cmd.conversation_id, cmd.message_id)
        roles.require(role, roles.Action.REACT)
        stored = await self.store.react(
            cmd.conversation_id, cmd.message_id, emoji, p.id, cmd.remove
        )
        if stored is None:
            raise ParleyError(ErrorCode.CONFLICT, "the message was deleted")
        return await self._publish_message_event(Event.MESSAGE_REACTED, stored)

    async def message_stop(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.MESSAGE_STOP, data)
        assert isinstance(cmd, MessageStop)
        conv = await self._conversation(p, cmd.conversation_id, totals=False)
        roles.require(roles.role_of(conv, p), roles.Action.STOP)
        stop = AgentStop(conversation_id=cmd.conversation_id, principal=p)
        await self._publish(
            subjects.AGENT_STOP, jsonutil.dumps(stop.model_dump(by_alias=True, mode="json"))
        )
        return {"stopping": True}

    async def task_create(self, p: Principal, data: dict[str, Any]) -> Any:
        cmd = commands.parse_payload(Event.TASK_CREATE, data)
        assert isinstance(cmd, TaskCreate)
        conv = await self._conversation(p, cmd.conversation_id, totals=False)
        roles.require(roles.role_of(conv, p), roles.Action.CREATE_TASK)
        task = domain.new_task(p, cmd, conv)
        await self.store.insert_task(task)
        wire = {k: iso(v) if isinstance(v, datetime) else v for k, v in task.items()}
        res = await self.sequencer.append(
            conv.id, Event.TASK_CREATED, lambda _seq: wire, key=command_key.get()
        )
        return res.frame["data"] if res.duplicate else wire

    _commands: dict[
        Event, Callable[[ConversationService, Principal, dict[str, Any]], Awaitable[Any]]
    ] = {
        Event.CONVERSATION_CREATE: conversation_create,
        Event.CONVERSATION_JOIN: conversation_join,
        Event.CONVERSATION_UPDATE: conversation_update,
        Event.CONVERSATION_DELETE: conversation_delete,
        Event.MESSAGE_SEND: message_send,
        Event.MESSAGE_EDIT: message_edit,
        Event.MESSAGE_DELETE: message_delete,
        Event.MESSAGE_REACT: message_react,
        Event.MESSAGE_STOP: message_stop,
        Event.TASK_CREATE: task_create,
        Event.CONVERSATION_READ: conversation_read,
    }

    # ------------------------------------------------------------ queries

    async def _q_list(self, p: Principal, data: dict[str, Any]) -> Any:
        q: ListConversationsQuery = _parse(ListConversationsQuery, data)
        await self.sequencer.settle_totals()  # read-your-writes for this replica's totals
        page = await self.store.list_conversations(p, q.status, q.cursor, q.limit)
        await self.receipts.unread_counts(p, page.items)
        await self.receipts.add_names(page.items)
        return {"items": page.items, "nextCursor": page.next_cursor}

    async def _q_get(self, p: Principal, data: dict[str, Any]) -> Any:
        q: GetConversationQuery = _parse(GetConversationQuery, data)
        await self.sequencer.settle_totals()  # read-your-writes for this replica's totals
        conv = await self._conversation(p, q.conversation_id)
        wire = model_json(conv)
        await self.receipts.unread_counts(p, [wire])
        await self.receipts.add_names([wire])
        return wire

    async def _q_messages(self, p: Principal, data: dict[str, Any]) -> Any:
        q: ListMessagesQuery = _parse(ListMessagesQuery, data)
        await self._conversation(p, q.conversation_id, totals=False)
        items, more = await self.store.list_messages(
            q.conversation_id, q.after_seq, q.before_seq, q.limit
        )
        wire = [self.attachments.sign(model_json(m)) for m in items]
        # afterSeq pages run forward (cut the newest end); the others are "the latest N"
        # (cut the oldest end). Either way the cut side is the one hasMore speaks of.
        kept, cut = self._cap_reply(wire, keep_end=q.after_seq is None)
        return {"items": kept, "hasMore": more or cut}

    def _reply_limits(self) -> tuple[int, int]:
        """(page budget, hard limit of one item) in bytes, under the NATS max payload."""
        try:
            max_payload = int(self.broker.connection.max_payload)
        except AttributeError:  # not connected yet
            max_payload = 1024 * 1024
        hard = max(1024, max_payload - REPLY_ENVELOPE_BYTES)
        return min(self.settings.max_reply_bytes, hard), hard

    def _cap_reply(self, items: list[Any], *, keep_end: bool = False) -> tuple[list[Any], bool]:
        budget, hard = self._reply_limits()
        sizes = [len(jsonutil.dumps(x)) + 1 for x in items]
        try:
            return domain.cap_page(items, sizes, budget, hard, keep_end=keep_end)
        except ParleyError as exc:
            details = dict(exc.details or {})
            index = details.pop("index", None)
            if isinstance(index, int) and isinstance(items[index], dict):
                details["seq"] = items[index].get("seq")
            raise ParleyError(exc.code, exc.message, details) from None

    async def events_since(self, req: EventsSinceRequest) -> Any:
        cid = check_id(req.conversation_id, "conversationId")
        await self._conversation(req.principal, cid, totals=False)
        frames = await self.store.events_since(cid, req.after_seq, req.until_seq, req.limit)
        frames = [self.attachments.sign_frame(f) for f in frames]
        last = await self.store.last_seq(cid)
        # A reply over the NATS max payload is never delivered: cut the page in bytes.
        frames, _cut = self._cap_reply(frames)
        end = last if req.until_seq is None else min(last, req.until_seq)
        sent = frames[-1].get("seq") if frames else None
        more = isinstance(sent, int) and sent < end
        return {"events": frames, "lastSeq": last, "hasMore": more}


async def _backoff() -> None:
    """A short random pause after losing an optimistic update, so contenders spread out."""
    await asyncio.sleep(random.uniform(0, 0.01))


async def _raw_body(msg: StreamMessage[Any]) -> bytes:
    """The request body untouched: parsed once, by the handler, into an envelope on error."""
    body: bytes = msg.body
    return body


def _may_send(kind: PrincipalKind, event: Event) -> bool:
    return may_send(kind, event)


__all__ = ["ConversationService", "Metrics", "forbidden"]
