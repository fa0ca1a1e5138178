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

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from parley_contract import envelopes, jsonutil, nats_auth, subjects
from parley_contract.agents import AgentDirectory
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import EventsSinceRequest, Principal
from parley_contract.streams import turns_bucket
from parley_gateway.metrics import Metrics
from parley_gateway.settings import Settings

logger = logging.getLogger(__name__)

EVENTS_PAGE = 200  # events per QUERY_EVENTS_SINCE request (the service allows up to 1000)
# Ephemeral events this gateway publishes (typing, presence) wait at most this long so that
# the publishes of many commands share one socket write of the NATS client.
PUBLISH_WINDOW_SECONDS = 0.001
# Failover of service requests (see Bus.request): backoff between attempts, doubling, capped.
RETRY_FIRST_BACKOFF = 0.05
RETRY_MAX_BACKOFF = 0.4
TIMEOUT_MESSAGE = (
    "the service did not answer in time: the outcome is unknown (the command may or may "
    "not have been applied); sending it again with the same clientMessageId is safe"
)


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
        self.kv_agents: KeyValue | None = None  # written by agent bridges, read here
        self.kv_turns: KeyValue | None = None  # running agent turns (turns.py)
        self._agents: AgentDirectory | None = None
        self.service_principal = Principal(id=self.instance_id, kind=PrincipalKind.SERVICE)
        # Publishes waiting for the window: (subject, payload, NATS headers or None).
        self._outbox: list[tuple[str, bytes, dict[str, str] | None]] = []
        self._publishing: set[asyncio.Task[None]] = set()
        self._last_batch = -1.0  # loop.time() of the last batch handed to the NATS client

    @property
    def agents(self) -> AgentDirectory:
        """GET /v1/agents (after start)."""
        assert self._agents is not None
        return self._agents

    async def connect(self) -> None:
        """Connect to NATS (retrying until it answers) and open the KV buckets."""
        delay = 0.2
        while True:
            try:
                self.nc = await nats.connect(
                    servers=[self.settings.nats_url],
                    name=f"parley-gateway {self.instance_id}",
                    inbox_prefix=nats_auth.inbox_prefix("gateway"),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=3,
                    error_cb=self._nats_error,
                    disconnected_cb=self._nats_disconnected,
                    reconnected_cb=self._nats_reconnected,
                )
                break
            except (OSError, nats.errors.Error) as exc:
                logger.warning("NATS not reachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        js = self.nc.jetstream()
        self._agents = AgentDirectory(js)
        self.kv_turns = await turns_bucket(js)
        self.kv_presence = await self._bucket(js, subjects.KV_PRESENCE, self._presence_ttl)
        self.kv_instances = await self._bucket(js, subjects.KV_INSTANCES, self._presence_ttl)
        self.kv_sessions = await self._bucket(
            js, subjects.KV_SESSIONS, self.settings.session_ttl_seconds
        )

    async def _nats_error(self, exc: Exception) -> None:
        logger.warning("NATS: %s", exc or type(exc).__name__)

    async def _nats_disconnected(self) -> None:
        logger.warning("NATS disconnected; reconnecting (readyz is 503 meanwhile)")

    async def _nats_reconnected(self) -> None:
        logger.info("NATS reconnected")

    @property
    def _presence_ttl(self) -> float:
        return self.settings.presence_ttl_seconds

    async def _bucket(self, js: Any, name: str, ttl: float) -> KeyValue:
        for _ in range(5):
            try:
                kv: KeyValue = await js.key_value(name)
                return kv
            except nats.js.errors.BucketNotFoundError:
                pass
            try:
                kv = await js.create_key_value(KeyValueConfig(bucket=name, history=1, ttl=ttl))
                return kv
            except nats.js.errors.BadRequestError:
                await asyncio.sleep(0.1)  # created concurrently by another instance
        raise RuntimeError(f"cannot open KV bucket {name}")

    # ------------------------------------------------------------------ requests

    async def request(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        """A NATS request to a Parley service; the reply envelope (ok/fail).

        Failover (issue 11): a request nobody answered (the replica died with it in flight,
        or no replica is subscribed right now) is sent again, the same bytes (so the same
        idempotency key), with short per-attempt timeouts (``attempt_timeout_seconds``,
        doubling) and a capped backoff, all within ``request_timeout_seconds``. A queue group
        hands the retry to a live replica: NATS drops a dead replica's subscriptions as soon
        as its connection closes. A reply, even an error, is never retried.
        """
        payload = jsonutil.dumps(body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout_seconds
        attempt_timeout = self.settings.attempt_timeout_seconds
        backoff = RETRY_FIRST_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            nc = self.nc
            if nc is None or not nc.is_connected:
                return envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "message bus unavailable")
            remaining = deadline - loop.time()
            try:
                msg = await nc.request(subject, payload, timeout=min(attempt_timeout, remaining))
                break
            except nats.errors.NoRespondersError:
                failure = envelopes.fail(
                    ErrorCode.SERVICE_UNAVAILABLE, "service unavailable, retry"
                )
            except nats.errors.TimeoutError:
                failure = envelopes.fail(
                    ErrorCode.TIMEOUT, TIMEOUT_MESSAGE, {"outcomeUnknown": True}
                )
            except nats.errors.Error as exc:
                logger.warning("NATS request on %s failed: %s", subject, exc)
                return envelopes.fail(ErrorCode.SERVICE_UNAVAILABLE, "message bus unavailable")
            if deadline - loop.time() <= backoff:
                if attempt > 1:
                    self.metrics.request_retries.labels("gave_up").inc()
                return failure
            self.metrics.request_retries.labels("retried").inc()
            logger.info("no answer on %s (attempt %d): retrying", subject, attempt)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_BACKOFF)
            attempt_timeout *= 2
        try:
            reply = jsonutil.loads(msg.data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or not isinstance(reply.get("success"), bool):
            logger.error("malformed reply on %s: %r", subject, msg.data[:200])
            return envelopes.fail(ErrorCode.INTERNAL_ERROR, "malformed service reply")
        return reply

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
                err = reply.get("error") or {}
                code = err.get("code", ErrorCode.INTERNAL_ERROR.value)
                if code == ErrorCode.TIMEOUT.value and limit > 1:
                    limit = max(1, limit // 10)
                    continue
                raise ParleyError(ErrorCode(code), str(err.get("message", "events query failed")))
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
        self._outbox.append((subject, payload, headers))
        if len(self._outbox) == 1:
            # At most one batch per window: one window after the previous batch, or at the
            # end of this loop iteration when that is past (quiet: no latency added).
            loop = asyncio.get_running_loop()
            due = self._last_batch + PUBLISH_WINDOW_SECONDS
            if due <= loop.time():
                loop.call_soon(self._send_outbox)
            else:
                loop.call_at(due, self._send_outbox)

    def _send_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        if batch:
            self._last_batch = asyncio.get_running_loop().time()
            task = asyncio.get_running_loop().create_task(self._publish_batch(batch))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    async def _publish_batch(self, batch: list[tuple[str, bytes, dict[str, str] | None]]) -> None:
        nc = self.nc
        if nc is None:
            return
        for subject, payload, headers in batch:  # no real wait inside: one flush for all
            try:
                await nc.publish(subject, payload, headers=headers)
            except nats.errors.Error as exc:
                logger.warning("publish on %s failed: %s", subject, exc)

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


async def keys_of(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except nats.js.errors.NoKeysError:
        return []
