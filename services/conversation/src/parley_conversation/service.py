"""The conversation service: wiring and lifecycle of one replica.

One FastStream subscriber (subscribers.py) per command route of the route table
(``routes_of(Service.CONVERSATION)``, queue group ``conversation``) and per query; each
decodes its request once, straight from the bytes, and calls its handler
(:mod:`parley_conversation.work`: role check and idempotency, then
:mod:`parley_conversation.handlers` or :mod:`parley_conversation.queries`). Every reply is
``envelopes.ok(data)`` or ``envelopes.fail(code, message, details)``; nothing a client sends
can make a handler raise. Durable writes go through the group-commit
:class:`~parley_conversation.sequencer.Sequencer`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.errors import Error as NatsError
from pymongo.errors import ConnectionFailure, PyMongoError

from parley_contract import envelopes, jsonutil
from parley_contract.agents import AgentDirectory
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.models import Conversation, Message
from parley_contract.partitions import partition_of
from parley_contract.routes import SEND_BATCH_ROUTE
from parley_conversation import agent_turns, queries, sendbatch, subscribers
from parley_conversation.affinity import PartitionSubscriptions
from parley_conversation.agent_watch import AgentWatch
from parley_conversation.attachments import Attachments
from parley_conversation.authcache import AuthCache
from parley_conversation.broker import make_broker
from parley_conversation.cursors import CursorStore
from parley_conversation.epochs import HighWaterMarks
from parley_conversation.handlers import conversation
from parley_conversation.legacy import fold_legacy_event_log
from parley_conversation.metrics import Metrics
from parley_conversation.outbox import COLLECTION as OUTBOX_COLLECTION
from parley_conversation.outbox import TurnOutbox
from parley_conversation.ownership import Ownership
from parley_conversation.receipts import Receipts
from parley_conversation.rejoin import Rejoins
from parley_conversation.sequencer import Sequencer
from parley_conversation.settings import Settings
from parley_conversation.store import MongoStore
from parley_conversation.subscribers import ROUTES
from parley_conversation.work import Work, command_work, query_work
from parley_runtime import bus, jetstream
from parley_runtime.retry import retry

logger = logging.getLogger(__name__)


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
        self.store.on_collision = self.metrics.seq_collisions.inc
        self.broker = make_broker(settings, graceful_timeout=settings.drain_seconds)
        self.sequencer = Sequencer(
            self.store,
            self.publish,
            self._after_store,
            max_batch=settings.max_batch,
            on_batch=self.metrics.batch.observe,
            on_projection_failure=self.metrics.projection_failures.inc,
            totals_interval=settings.totals_interval_seconds,
            max_wait=settings.max_wait_seconds,
            on_committed=self._note_mark,
            publish_frame=self.publish,
        )
        self.outbox = TurnOutbox(
            self.store.messages.database[OUTBOX_COLLECTION],
            self._jetstream,
            on_failure=self.metrics.agent_turn_failures.inc,
        )
        self.cursors = CursorStore(self.store.messages.database, self.store.messages)
        self.receipts = Receipts(
            self.cursors,
            self.store.last_seq,
            self.publish,
            settings.receipts_window_seconds,
            totals=self.store.totals,
            write_marks=self.sequencer.totals.write_marks,
        )
        self.rejoins = Rejoins(self)  # batched rejoins, grouped per conversation (rejoin.py)
        self.ready = False
        self.agents: AgentDirectory | None = None  # opened on first use (agent_turns)
        self._started = False
        self.agent_watch: AgentWatch | None = None
        self._in_flight = 0
        # Read when scraped: no gauge update (a lock each) per request.
        self.metrics.in_flight.set_function(lambda: self._in_flight)
        self._idle = asyncio.Event()
        self._idle.set()
        self.attachments = Attachments(
            self.store.attachments,
            lambda p, cid: conversation(self, p, cid, totals=False),
            url_ttl_seconds=settings.attachments_url_ttl_seconds,
        )
        # Conversation affinity (docs/affinity.md): the writes of the partitions this
        # replica owns, on their own subjects; the leases are kept by self.ownership.
        self.partitions = PartitionSubscriptions(
            lambda: self.broker.connection,
            self.serve,
            {r.event: command_work(self, r) for r in ROUTES if r.partitioned},
            queries={q.subject: query_work(self, q) for q in queries.QUERIES if q.partitioned},
            # A gateway's queued sends to one conversation, as one request (sendbatch.py).
            batches={SEND_BATCH_ROUTE.event: (sendbatch.OP, sendbatch.send_batch_work(self))},
            forget=self._forget_partition,
            on_owned=self.metrics.owned_partitions.set,
            drain_seconds=settings.drain_seconds,
        )
        # The partition owner's cache of what authorizes a send (authcache.py).
        auth = self.sequencer.auth = AuthCache(self.store.cached_next_seq, self.partitions.owns)
        self.metrics.auth_cache_hits.set_function(lambda: auth.hits)
        self.metrics.auth_cache_misses.set_function(lambda: auth.misses)
        self.metrics.auth_cache_entries.set_function(auth.__len__)
        self.ownership: Ownership | None = None
        self.receipts.mine = lambda cid: self.partitions.holds(partition_of(cid))
        # A killed owner's lease outlives it by up to a lease (and its member key a little
        # more): the reports it never applied are held at least that long by the others.
        self.receipts.held_seconds = 3 * settings.lease_seconds
        self._subscribers: list[Any] = subscribers.register(self, self._delivery_report)

    # ------------------------------------------------------------ wiring

    async def _delivery_report(self, body: bytes) -> None:
        try:
            await self.receipts.delivery_report(body)
        except PyMongoError:
            logger.warning("delivery report not applied (store)", exc_info=True)

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
            self.publish,
        )
        self.agent_watch.start()
        await self.outbox.start()
        await self.broker.start()
        await self.rejoins.listen(nc)
        await self._own_partitions(want)
        # Ready once the server holds the subscriptions (bus.flush: nats-py's flush alone
        # can be answered before the server read them): a request sent right after start
        # would otherwise get "no responders" on a busy machine.
        await retry("registering the subscriptions", lambda: bus.flush(nc, wait=5))
        self._started = True
        self.ready = True
        logger.info("conversation service %s ready", self.settings.instance_id)

    async def _own_partitions(self, want: jetstream.Replicas) -> None:
        """Join the partition leases (docs/affinity.md): this replica's share of the free
        partitions now, the rest as the others hand them off."""
        own = Ownership(
            self.broker.connection,
            self.settings.instance_id,
            ttl=self.settings.lease_seconds,
            on_acquire=self._take_partition,
            on_release=self.partitions.release,
            on_change=lambda how: self.metrics.partition_moves.labels(how).inc(),
        )
        await retry("opening the partition leases", lambda: own.open(want))
        self.ownership = own
        await own.start()

    async def _open_store(self) -> None:
        await self.store.init()
        await self.cursors.init()
        await self.attachments.init()
        # Before any request: the old log's seqs must be in place before new writes.
        await fold_legacy_event_log(self.store)

    async def _take_partition(self, partition: int) -> None:
        await self.partitions.acquire(partition)
        self.receipts.took(partition)

    def _forget_partition(self, which: Callable[[str], bool]) -> None:
        """A partition taken or given up: its cached next seqs and authorizations go."""
        self.store.forget_seqs_where(which)
        self.receipts.delivery.forget_where(which)
        if self.sequencer.auth is not None:
            self.sequencer.auth.drop_where(which)

    async def _note_mark(self, conversation_id: str, epoch: int, seq: int) -> None:
        if self.store.marks is not None:
            await self.store.marks.note(conversation_id, epoch, seq)

    async def _store_agent_failure(self, message: Message) -> None:
        await self.sequencer.send(agent_turns.PARLEY, message)

    async def _ensure_stream(self, want: jetstream.Replicas) -> None:
        js = self.broker.connection.jetstream()
        await jetstream.declare_agent_turns_stream(js, want)
        await jetstream.declare_turns_bucket(js, want)  # the queued state of new turns

    async def stop(self) -> None:
        """Stop taking requests, finish the in-flight batches and replies, then disconnect."""
        self.ready = False
        if self.ownership is not None:
            # Each owned partition: stop taking, finish its writes, release its lease, so
            # the others take over at once (their next tick).
            await self.ownership.stop()
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
        await self.rejoins.stop_listening()
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

    # ------------------------------------------------------------ requests

    async def serve(self, op: str, body: bytes, work: Work) -> bytes:
        """One request → one reply envelope (bytes). Never raises."""
        started = time.perf_counter()
        self._in_flight += 1
        self._idle.clear()
        try:
            try:
                if len(body) > self.settings.max_request_bytes:
                    raise ParleyError(
                        ErrorCode.PAYLOAD_TOO_LARGE,
                        f"request larger than {self.settings.max_request_bytes} bytes",
                    )
                envelope = envelopes.ok(await work(body))
                outcome = "ok"
            except ParleyError as exc:
                envelope = envelopes.fail_from(exc)
                outcome = exc.code.value
            except PyMongoError:
                logger.exception("store error on %s", op)
                envelope = envelopes.fail(
                    ErrorCode.SERVICE_UNAVAILABLE, "the store is unavailable, retry"
                )
                outcome = ErrorCode.SERVICE_UNAVAILABLE.value
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("unexpected error on %s", op)
                envelope = envelopes.fail(ErrorCode.INTERNAL_ERROR, "internal error")
                outcome = ErrorCode.INTERNAL_ERROR.value
            self.metrics.served(op, outcome, time.perf_counter() - started)
            return jsonutil.dumps(envelope)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    # ------------------------------------------------------------ effects

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Core NATS publish. A failure never fails a stored write: the frame is in the event
        log, and gateways fill the gap from QUERY_EVENTS_SINCE when the next one arrives."""
        payload = self.attachments.sign_payload(payload)  # urls signed as they go out
        try:
            await self.broker.connection.publish(subject, payload, headers=headers)
        except NatsError as exc:
            self.metrics.publish_failures.inc()
            logger.warning("could not publish on %s: %r", subject, exc)

    def _after_store(
        self, conv: Conversation, stored: list[Message]
    ) -> Coroutine[Any, Any, None] | None:
        """After a batch: the receipts' activity (coalesced, no I/O) at once; the agent
        turns in the background, for a conversation with an agent only (no task per
        conversation per batch for the others)."""
        self.receipts.activity(conv, stored)
        if not conv.agent_id:
            return None
        return agent_turns.after_store(self, conv, stored)

    def _jetstream(self) -> Any:
        return self.broker.connection.jetstream()  # the connection exists once started


__all__ = ["ConversationService", "Metrics"]
