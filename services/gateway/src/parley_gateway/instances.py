"""Instances and reaping, the cluster side of presence (parley_gateway.presence).

- Each instance keeps a heartbeat entry in the instances bucket (TTL, refreshed with the
  presence entries every ``presence_ttl_seconds / 3``); when one vanishes (expired: the
  instance crashed) one gateway publishes the offline events its clients could not send.
- ``/v1/scaling`` counts users, agents and instances from the buckets.

Without their buckets (issue 19: no JetStream quorum, a bucket's node down) each step goes on
by itself: presence entries, the heartbeat and the reaping are tried independently, nothing
is reaped while the instances bucket cannot be listed nor for one TTL after it answers again
(live instances write their heartbeat again first), and ``/v1/scaling`` answers
``SERVICE_UNAVAILABLE`` naming the buckets it could not read, with what it could count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors

from parley_contract import envelopes, jsonutil, kvread, subjects
from parley_contract.errors import ErrorCode, ParleyError
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.timeutil import now_iso
from parley_gateway.fanout import PRESENCE_EVENTS, Fanout
from parley_gateway.metrics import Metrics
from parley_gateway.natsbalance import Balancer, Placement, address, server_name
from parley_gateway.settings import Settings
from parley_runtime import tasks

if TYPE_CHECKING:
    from parley_gateway.presence import PrincipalState

logger = logging.getLogger(__name__)

KV_READ_SECONDS = 2.0  # a bucket that has not answered by then is unavailable
KV_WRITE_SECONDS = 1.5  # an acknowledged presence write (a disconnect waits for it)
_KV_ERRORS = (TimeoutError, nats.errors.Error, nats.js.errors.Error)


class Instances(Fanout):
    """The instances' heartbeats, the reaping of vanished ones, the cluster's counts."""

    # This instance's principals (parley_gateway.presence.Presence keeps them).
    principals: dict[tuple[PrincipalKind, str], PrincipalState]

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self.started_at = now_iso()
        self._seen_instances: set[str] = set()
        self._reap_after = 0.0  # time.monotonic(): no reaping before (instances bucket back)
        # Gateways spread over the NATS nodes (natsbalance.py).
        self.balancer = Balancer(self.instance_id)

    async def _put_instance(self) -> None:
        if self.kv_instances is None or self.draining:
            return
        users = sum(
            1 for (kind, _), s in self.principals.items() if s.conns and kind is PrincipalKind.USER
        )
        doc = {
            "instanceId": self.instance_id,
            "host": self.settings.host,
            "port": self.settings.port,
            "connections": len(self.sessions),
            "users": users,
            "agents": len(self.principals) - users,
            "conversations": len(self.convs),
            "startedAt": self.started_at,
            "updatedAt": now_iso(),
            "natsServer": server_name(self.nc),
            "natsAddress": address(self.nc.connected_url) if self.nc is not None else None,
        }
        await self.kv_instances.put(self.instance_id, jsonutil.dumps(doc))

    async def announce_reconnects(self) -> None:
        """Write the heartbeat again as soon as the NATS connection moved to another node
        (failover or balancing): the other gateways' plans count this one where it is now,
        not where it was up to one refresh ago (natsbalance.py)."""
        while True:
            await self.reconnected.wait()
            self.reconnected.clear()
            try:  # a stop's cancel that this put swallowed ends the loop (tasks.cancellable)
                await tasks.cancellable(asyncio.wait_for(self._put_instance(), KV_WRITE_SECONDS))
            except _KV_ERRORS as exc:  # JetStream away: the next refresh writes it
                logger.debug("heartbeat after a reconnect not written: %r", exc)

    async def kv_keys(self, bucket: str, *, absent_is_empty: bool = False) -> list[str] | None:
        """The live keys of a bucket; None when it does not answer within ``KV_READ_SECONDS``
        (or NATS is not connected yet). ``absent_is_empty``: a bucket that does not exist
        (yet) has no keys, rather than being unavailable."""
        if self.nc is None:
            return None
        try:
            return await asyncio.wait_for(
                kvread.live_keys(self.nc.jetstream(), bucket), KV_READ_SECONDS
            )
        except nats.js.errors.NotFoundError:
            if absent_is_empty:
                return []
            self.metrics.kv_unavailable.labels(bucket).inc()
            return None
        except _KV_ERRORS as exc:
            logger.warning("KV %s unavailable: %r", bucket, exc)
            self.metrics.kv_unavailable.labels(bucket).inc()
            return None

    async def _watch_instances(self) -> None:
        """Notice instances whose heartbeat key is gone (crashed: expired) and reap them."""
        if self.kv_instances is None or self.draining:
            return
        listed = await self.kv_keys(subjects.KV_INSTANCES)
        now = time.monotonic()
        if listed is None:
            # Their heartbeats may have expired meanwhile: once the bucket is back, live
            # instances get one TTL to write theirs again before a missing one is gone.
            self._reap_after = now + self._presence_ttl
            return
        keys = set(listed)
        if now < self._reap_after:
            self._seen_instances |= keys
            return
        gone = self._seen_instances - keys - {self.instance_id}
        self._seen_instances = keys
        for instance in sorted(gone):
            if not await self._reap(instance):
                self._seen_instances.add(instance)  # tried again at the next refresh
        await self._balance(sorted(keys))

    async def _balance(self, instances: list[str]) -> None:
        """Move to another NATS node if this one holds more than its share of gateways."""
        assert self.kv_instances is not None and self.nc is not None
        placements: list[Placement] = []
        for instance in instances:
            try:
                entry = await asyncio.wait_for(self.kv_instances.get(instance), KV_READ_SECONDS)
                doc = jsonutil.loads(entry.value or b"")
            except (*_KV_ERRORS, ValueError):
                return  # counts unknown: no move
            if isinstance(doc, dict) and doc.get("natsServer"):
                addr = doc.get("natsAddress")
                placements.append(
                    Placement(instance, str(doc["natsServer"]), str(addr) if addr else None)
                )
        live = await self._live_nodes()
        if live is None:
            return  # JetStream cannot tell which nodes are current: no move
        if await self.balancer.maybe_move(self.nc, placements, live):
            with contextlib.suppress(*_KV_ERRORS):
                await self._put_instance()  # the new node, for the others' counts

    async def _live_nodes(self) -> set[str] | None:
        """The NATS nodes JetStream reports current for the instances bucket (its leader and
        replicas neither offline nor behind); None when it does not answer or has no leader."""
        assert self.nc is not None
        try:
            info = await asyncio.wait_for(
                self.nc.jetstream().stream_info(subjects.kv_stream(subjects.KV_INSTANCES)),
                KV_READ_SECONDS,
            )
        except _KV_ERRORS as exc:
            logger.debug("instances bucket info unavailable: %r", exc)
            return None
        cluster = info.cluster
        if cluster is None or not cluster.leader:
            return None
        current = {p.name for p in cluster.replicas or [] if p.name and p.current and not p.offline}
        return {cluster.leader, *current}

    async def _reap(self, instance: str) -> bool:
        """Publish the offline events a vanished instance could not send.

        One gateway does it (a KV ``create`` is the lock): each session still attributed to
        that instance (clients that have not resumed elsewhere) gets ``presence:offline`` /
        ``agent:offline`` in each of its conversations. After a graceful drain these repeat
        offline events already sent; after a crash they are the only ones.
        """
        assert self.kv_presence is not None and self.kv_sessions is not None
        lock = f"reaped.{instance}"
        try:
            await self.kv_presence.create(lock, self.instance_id.encode())
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            return True  # another gateway is on it
        except _KV_ERRORS as exc:
            logger.warning("reaping %s postponed: %r", instance, exc)
            return False
        logger.info("instance %s is gone: publishing its clients' offline events", instance)
        count = 0
        sessions = await self.kv_keys(subjects.KV_SESSIONS)
        if sessions is None:
            with contextlib.suppress(*_KV_ERRORS):  # let the next try take the lock again
                await self.kv_presence.delete(lock)
            return False
        for key in sessions:
            try:
                entry = await self.kv_sessions.get(key)
                doc = jsonutil.loads(entry.value or b"")
            except (nats.js.errors.Error, nats.errors.Error, ValueError):
                continue
            if not isinstance(doc, dict) or doc.get("instanceId") != instance:
                continue
            try:
                principal = Principal.model_validate(doc.get("principal"))
            except ValueError:
                continue
            event = PRESENCE_EVENTS.get((principal.kind, False))
            if event is None:
                continue
            # Marked first, unless it was resumed meanwhile (its revision moved): a resume
            # that reads the mark announces itself online again (sessions.Restored).
            try:
                marked = jsonutil.dumps({**doc, "offline": True})
                await self.kv_sessions.update(key, marked, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            except _KV_ERRORS as exc:
                logger.warning("session %s not marked offline: %r", key, exc)
            for cid in doc.get("conversations") or {}:
                data = {
                    "conversationId": cid,
                    "principalId": principal.id,
                    "kind": principal.kind.value,
                    "name": principal.name,
                    "reason": "instance-lost",
                }
                with contextlib.suppress(nats.errors.Error, ParleyError):
                    await self.publish(cid, envelopes.event_frame(event, data, conversation_id=cid))
                    count += 1
        logger.info("instance %s: %d offline events published", instance, count)
        return True

    async def scaling(self) -> dict[str, Any]:
        """design doc 1.4: users, agents and instances online across the cluster.

        A bucket that does not answer: ``SERVICE_UNAVAILABLE`` with ``details.unavailable``
        (its names) and ``details.partial`` (the counts that could be made)."""
        presence, bridges, instances = await asyncio.gather(
            self.kv_keys(subjects.KV_PRESENCE),
            # Written by agent bridges: absent until one has started (then no agents).
            self.kv_keys(subjects.KV_AGENTS, absent_is_empty=True),
            self.kv_keys(subjects.KV_INSTANCES),
        )
        counts: dict[str, Any] = {}
        if presence is not None:
            users: set[str] = set()
            agents: set[str] = set()
            for key in presence:
                kind, _, rest = key.partition(".")
                pid = rest.rsplit(".", 1)[0]
                if kind == PrincipalKind.USER.value:
                    users.add(pid)
                elif kind == PrincipalKind.AGENT.value:
                    agents.add(pid)
            counts["users"] = len(users)
            if bridges is not None:
                # Agents served by agent bridges: key <agentId>.<bridgeInstanceId>.
                agents.update(key.rsplit(".", 1)[0] for key in bridges)
                counts["agents"] = len(agents)
        if instances is not None:
            counts["instances"] = n = len(instances)
            if "users" in counts:
                counts["avgUsersPerInstance"] = round(counts["users"] / n) if n else 0
        unavailable = [
            bucket
            for bucket, keys in (
                (subjects.KV_PRESENCE, presence),
                (subjects.KV_AGENTS, bridges),
                (subjects.KV_INSTANCES, instances),
            )
            if keys is None
        ]
        if unavailable:
            raise ParleyError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "some counts cannot be made right now (KV unavailable): try again shortly",
                {"reason": "kv-unavailable", "unavailable": unavailable, "partial": counts},
            )
        return counts
