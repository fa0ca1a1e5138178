"""Everything one gateway instance shares between its connections, over NATS.

The hub is built in layers, one file each:

- :mod:`parley_gateway.bus`: the NATS connection, KV buckets, service requests, publishes;
- :mod:`parley_gateway.sessions`: resumable sessions in KV, kicks, the drain;
- :mod:`parley_gateway.fanout`: conversation subscriptions, ordering, membership, eviction;
- :mod:`parley_gateway.presence`: principals, presence, instance heartbeats and reaping;

and this one: the lifecycle (start, periodic tasks, stop) and the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import nats.errors

from parley_gateway.fanout import ConvState
from parley_gateway.metrics import Metrics
from parley_gateway.presence import Presence
from parley_gateway.rejoins import Rejoins
from parley_gateway.settings import Settings
from parley_runtime.tasks import cancel_all, every

__all__ = ["ConvState", "Hub"]

logger = logging.getLogger(__name__)


class Hub(Presence):
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics)
        self._tasks: list[asyncio.Task[None]] = []
        # Resumed sessions' rejoins, batched per conversation (rejoins.py). Without the
        # request's failover: a batch the service is slow to answer (a storm) was sent again
        # after 0.75 s, and again, and the service read it each time; Rejoins asks a timed
        # out batch once more itself (another replica, if one died with it).
        self.rejoins = Rejoins(
            functools.partial(self.request, failover=False),
            self.instance_id,
            metrics.rejoin_batch.observe,
        )

    @property
    def ready(self) -> bool:
        return (
            not self.draining
            and self.nc is not None
            and self.nc.is_connected
            and self.kv_sessions is not None
        )

    async def start(self) -> None:
        await self.connect()
        await self.listen_kicks()
        try:
            await self._put_instance()
        except nats.errors.Error as exc:  # JetStream away again: the refresh loop puts it
            logger.warning("instance entry not written yet: %r", exc)
        self._tasks = [
            asyncio.create_task(self._loop(self._presence_ttl / 3, self._refresh_presence)),
            asyncio.create_task(self._loop(self.settings.session_flush_seconds, self.flush)),
            asyncio.create_task(
                self._loop(self.settings.session_ttl_seconds / 3, self._refresh_sessions)
            ),
            asyncio.create_task(self._loop(self.settings.heartbeat_seconds, self._heartbeat)),
            asyncio.create_task(self.announce_reconnects()),
            asyncio.create_task(
                self._loop(self.settings.delivery_report_seconds, self.delivery.report)
            ),
        ]
        logger.info("gateway %s connected to NATS %s", self.instance_id, self.settings.nats_url)

    def _loop(
        self, interval: float, fn: Callable[[], Awaitable[None]]
    ) -> Coroutine[Any, Any, None]:
        what = f"periodic task {getattr(fn, '__name__', fn)}"
        return every(interval, fn, what=what, log=logger)

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        with contextlib.suppress(Exception):
            await self.flush()
        await self.flush_publishes()
        if self.kv_instances is not None:
            with contextlib.suppress(Exception):
                await self.kv_instances.delete(self.instance_id)
        if self.kv_presence is not None:
            for (kind, pid), state in list(self.principals.items()):
                if state.conns:
                    with contextlib.suppress(Exception):
                        await self.kv_presence.delete(self._presence_key(kind, pid))
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def _heartbeat(self) -> None:
        now = time.time()
        for conn in list(self.sessions.values()):
            if conn.closing:
                continue
            if conn.exp <= now:
                conn.close(4401, "token expired")
                continue
            conn.send_ping()
