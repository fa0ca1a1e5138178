"""The gateway's NATS side: the connection, its KV buckets, service requests and publishes.

- :meth:`Bus.request`: a request to a Parley service with failover (issue 11), the reply
  envelope (ok/fail) back; :meth:`Bus.event_pages`: a conversation's durable frames from the
  store, page by page.
- :meth:`Bus.publish`: ephemeral events (typing, presence) batched for
  ``PUBLISH_WINDOW_SECONDS`` under load so that many commands' publishes share one socket
  write; when quiet, sent at the end of the loop iteration (no window of latency).
- Presence, instances and sessions live in JetStream KV buckets whose entries expire on their
  own (bucket TTL) unless refreshed, so a crashed instance's clients disappear by themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from parley_contract import envelopes, jsonutil, subjects
from parley_contract.agents import AgentDirectory
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import EventsSinceRequest, Principal
from parley_contract.turnstate import KV_TTL_SECONDS
from parley_gateway import natsdirect
from parley_gateway.conn import flush_all
from parley_gateway.metrics import Metrics
from parley_gateway.natsbalance import server_name
from parley_gateway.settings import Settings
from parley_runtime import bus, jetstream, requests
from parley_runtime.retry import retry

logger = logging.getLogger(__name__)

EVENTS_PAGE = 200  # events per QUERY_EVENTS_SINCE request (the service allows up to 1000)
# Ephemeral events this gateway publishes (typing, presence) wait at most this long so that
# the publishes of many commands share one socket write of the NATS client.
PUBLISH_WINDOW_SECONDS = 0.001

_Outgoing = tuple[str, bytes, dict[str, str] | None] | bytes


class Bus:
    """The NATS connection of one gateway instance and what it does over it."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.instance_id = settings.instance_id
        self.nc: NATS | None = None
        self.kv_presence: KeyValue | None = None
        self.kv_instances: KeyValue | None = None
        self.kv_sessions: KeyValue | None = None
        self.kv_turns: KeyValue | None = None  # running agent turns (turns.py)
        self._agents: AgentDirectory | None = None
        self.service_principal = Principal(id=self.instance_id, kind=PrincipalKind.SERVICE)
        # Publishes waiting for the window: (subject, payload, NATS headers or None), or a
        # raw protocol command (``command_soon``: a SUB).
        self._outbox: list[_Outgoing] = []
        self._publishing: set[asyncio.Task[None]] = set()
        # Set when the NATS connection moved to a node (failover, balancing): the heartbeat
        # is written again at once (presence.py), so other gateways count this one right.
        self.reconnected = asyncio.Event()
        # The first attempt's wait before a request is sent again, from the reply times seen
        # (parley_runtime.requests.AttemptTimer), never below attempt_timeout_seconds.
        self.attempt_timer = requests.AttemptTimer(settings.attempt_timeout_seconds)
        self._last_batch = -1.0  # loop.time() of the last batch handed to the NATS client
        # The outbox's pending send (a timer or a call_soon handle).
        self._outbox_timer: asyncio.Handle | None = None

    @property
    def agents(self) -> AgentDirectory:
        """GET /v1/agents (after start)."""
        assert self._agents is not None
        return self._agents

    async def connect(self) -> None:
        """Connect to NATS and declare the KV buckets, retrying (capped backoff) through an
        outage or a JetStream without quorum: not ready meanwhile, never an exit."""
        self.nc = await bus.connect(self.settings, "gateway", reconnected_cb=self._on_reconnected)
        natsdirect.after_each_read(self.nc, flush_all)  # the clients' frames without a tick
        js = self.nc.jetstream()
        self._agents = AgentDirectory(js)
        want = jetstream.replicas(self.nc, self.settings)
        presence_ttl = self.settings.presence_ttl_seconds
        buckets = (
            (subjects.KV_TURNS, KV_TTL_SECONDS),  # jetstream.declare_turns_bucket's
            (subjects.KV_PRESENCE, presence_ttl),
            (subjects.KV_INSTANCES, presence_ttl),
            (subjects.KV_SESSIONS, self.settings.session_ttl_seconds),
        )
        opened: dict[str, KeyValue] = {}
        for name, ttl in buckets:

            async def declare(name: str = name, ttl: float = ttl) -> KeyValue:
                return await jetstream.declare_kv(js, name, want, ttl=ttl)

            opened[name] = await retry(f"declaring KV bucket {name}", declare)
        self.kv_turns = opened[subjects.KV_TURNS]
        self.kv_presence = opened[subjects.KV_PRESENCE]
        self.kv_instances = opened[subjects.KV_INSTANCES]
        self.kv_sessions = opened[subjects.KV_SESSIONS]

    async def _on_reconnected(self) -> None:
        logger.info("NATS reconnected (node %s)", server_name(self.nc))
        self.reconnected.set()

    @property
    def _presence_ttl(self) -> float:
        return self.settings.presence_ttl_seconds

    # ------------------------------------------------------------------ requests

    async def request(
        self,
        subject: str,
        body: dict[str, Any] | bytes,
        *,
        fallback: str | None = None,
        failover: bool = True,
        nobody_ends: bool = False,
    ) -> dict[str, Any]:
        """A NATS request to a Parley service; the reply envelope (ok/fail), relayed as is.

        With failover (parley_runtime.requests): a request nobody answered is sent again,
        the same bytes, within ``request_timeout_seconds``; a reply is never retried. A
        partition's write that finds no owner goes to ``fallback`` (docs/affinity.md).
        ``failover=False``: one attempt for the whole budget (the caller asks again itself).
        ``body``: a dict, or its JSON already encoded; ``nobody_ends``: see
        ``requests.request_bytes`` (a batch of sends nobody serves goes one by one).
        """
        try:
            reply = await requests.request_bytes(
                self.nc,
                subject,
                body if isinstance(body, bytes) else jsonutil.dumps(body),
                budget=self.settings.request_timeout_seconds,
                attempt_timeout=self.attempt_timer if failover else None,
                on_attempt=self._count_attempt,
                fallback=fallback,
                nobody_ends=nobody_ends,
            )
            return requests.parse_envelope(subject, reply)
        except ParleyError as exc:
            return envelopes.fail(exc.code, exc.message, exc.details)

    def _count_attempt(self, outcome: str) -> None:
        self.metrics.request_retries.labels(outcome).inc()

    def command_body(self, principal: Principal, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "principal": principal.model_dump(mode="json"),
            "data": data,
            "instanceId": self.instance_id,
        }

    async def events_since(
        self, principal: Principal, cid: str, after: int, until: int | None
    ) -> list[tuple[int, bytes]]:
        """Durable frames of a conversation with after < seq <= until (all pages), in order."""
        out: list[tuple[int, bytes]] = []
        async for page in self.event_pages(principal, cid, after, until):
            out.extend(page)
        return out

    async def event_pages(
        self, principal: Principal, cid: str, after: int, until: int | None
    ) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Pages of (seq, frame bytes) with after < seq <= until, in order, from the store.

        A page that times out is asked again smaller (a reply over the NATS max payload
        never arrives): EVENTS_PAGE, then /10, then 1 event at a time.
        """
        limit = EVENTS_PAGE
        while True:
            req = EventsSinceRequest(
                principal=principal,
                conversation_id=cid,
                after_seq=after,
                until_seq=until,
                limit=limit,
            )
            reply = await self.request(
                subjects.QUERY_EVENTS_SINCE, req.model_dump(mode="json", by_alias=True)
            )
            if not reply["success"]:
                error = requests.error_of(reply)
                if error.code is ErrorCode.TIMEOUT and limit > 1:
                    limit = max(1, limit // 10)
                    continue
                raise error
            data = reply.get("data") or {}
            frames = data.get("events") or []
            page: list[tuple[int, bytes]] = []
            for frame in frames:
                seq = frame.get("seq") if isinstance(frame, dict) else None
                if isinstance(seq, int) and seq > after and (until is None or seq <= until):
                    page.append((seq, jsonutil.dumps(frame)))
            page.sort(key=lambda p: p[0])
            if not page:
                return
            yield page
            after = page[-1][0]
            last_seq = data.get("lastSeq")
            target = until if until is not None else last_seq
            if not isinstance(target, int) or after >= target:
                return

    # ------------------------------------------------------------------ publishes

    async def publish(self, cid: str, frame: dict[str, Any], *, origin: str | None = None) -> None:
        """Publish an ephemeral event to a conversation (batched; never waits for NATS)."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            raise ParleyError(ErrorCode.SERVICE_UNAVAILABLE, "message bus unavailable")
        headers = {subjects.HEADER_ORIGIN: origin} if origin is not None else None
        self.publish_soon(subjects.conversation_ephemeral(cid), jsonutil.dumps(frame), headers)

    def publish_soon(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Publish within ``PUBLISH_WINDOW_SECONDS``, in order with the other publishes here.

        Publishes are collected and handed to the NATS client together, at most one batch
        per window: one socket write for the batch instead of one per event loop tick that
        published (the
        gateway publishes ephemeral events, typing and presence, and unacknowledged KV
        writes: many connects or session flushes in a window share one write).
        """
        self._queue_soon((subject, payload, headers))

    def command_soon(self, command: bytes) -> None:
        """A raw protocol command (the ``SUB`` of ``natsdirect.subscribe_later``) sent with
        the next batch, in order with the publishes: a notification for the principal
        published after ``connected`` must find the subscription in place."""
        self._queue_soon(command)

    def _queue_soon(self, item: _Outgoing) -> None:
        self._outbox.append(item)
        if self._outbox_timer is not None:
            return  # a batch is due already
        # At most one batch per window: one window after the previous batch, or at the end
        # of this loop iteration when that is past (quiet: no latency added).
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self._last_batch + PUBLISH_WINDOW_SECONDS
        if due <= now:
            self._outbox_timer = loop.call_soon(self._send_outbox)
        else:
            self._outbox_timer = loop.call_at(due, self._send_outbox)

    def _send_outbox(self) -> None:
        if self._outbox_timer is not None:
            self._outbox_timer.cancel()  # flush_publishes: sent before its time
            self._outbox_timer = None
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        loop = asyncio.get_running_loop()
        self._last_batch = loop.time()
        nc = self.nc
        # Written now when nothing waits in the NATS client (the usual case): not through
        # a task and nats-py's flusher task, two more loop iterations before the socket.
        if nc is not None and natsdirect.write_now(nc, lambda: self._commands(nc, batch)):
            return
        task = loop.create_task(self._publish_batch(batch))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    @staticmethod
    def _commands(nc: NATS, batch: list[_Outgoing]) -> list[bytes]:
        """The protocol commands of a batch (what ``_publish_batch`` would send)."""
        out: list[bytes] = []
        for item in batch:
            if isinstance(item, bytes):
                out.append(item)
                continue
            subject, payload, headers = item
            try:
                out.append(natsdirect.pub_command(nc, subject, payload, headers))
            except nats.errors.Error as exc:
                logger.warning("publish on %s failed: %s", subject, exc)
        return out

    async def _publish_batch(self, batch: list[_Outgoing]) -> None:
        nc = self.nc
        if nc is None:
            return
        commands = False
        for item in batch:  # no real wait inside: one flush for all
            if isinstance(item, bytes):
                if nc.is_closed:
                    continue
                await nc._send_command(item)  # what nc.subscribe does, without its flush
                commands = True
                continue
            subject, payload, headers = item
            try:
                await nc.publish(subject, payload, headers=headers)
            except nats.errors.Error as exc:
                logger.warning("publish on %s failed: %s", subject, exc)
        queue = nc._flush_queue
        if commands and not nc.is_closed and queue is not None and queue.empty():
            await nc._flush_pending()  # as publish does: a flush already queued sends it all

    async def flush_publishes(self) -> None:
        """Send what waits in the outbox now (drain, stop, before an acknowledged KV write)."""
        if self._outbox:
            self._send_outbox()
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)

    def kv_publish_soon(self, bucket: str, key: str, value: bytes) -> None:
        """A KV put without waiting for JetStream's acknowledgement (``publish_soon``).

        An acknowledged KV write made after it must call ``flush_publishes`` first, so that
        it is not overtaken by this older value."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            return
        self.publish_soon(subjects.kv_key_subject(bucket, key), value)
