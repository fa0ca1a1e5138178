"""The command subscriptions of the partitions a replica owns (docs/affinity.md).

One NATS subscription per owned partition (``subjects.partition_commands(n)``, queue group
conversation) carries every write of that partition's conversations and their
conversation-scoped reads (``QueryRoute.partitioned``: the owner's totals are
read-your-writes); each message becomes a task that runs the route's work through ``serve``
(the same path as the plain subjects) and answers. Giving a partition up gracefully drains
its subscription (the server stops routing to this replica; what was received is still
handled) and waits for its tasks, whose replies come after their group commit: once it
returns, nothing of that partition is in flight here and the next owner may read the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from parley_contract import subjects
from parley_contract.events import Event
from parley_contract.partitions import partition_of
from parley_contract.routes import (
    batch_route_of_subject,
    query_route_of_subject,
    route_of_subject,
)

logger = logging.getLogger(__name__)

# (operation, body, work) → the reply's bytes; never raises (ConversationService.serve).
Serve = Callable[[str, bytes, Callable[[bytes], Awaitable[Any]]], Awaitable[bytes]]


class PartitionSubscriptions:
    def __init__(
        self,
        nc: Callable[[], Any],
        serve: Serve,
        works: dict[Event, Callable[[bytes], Awaitable[Any]]],
        *,
        queries: dict[str, Callable[[bytes], Awaitable[Any]]] | None = None,
        batches: dict[Event, tuple[str, Callable[[bytes], Awaitable[Any]]]] | None = None,
        forget: Callable[[Callable[[str], bool]], None],
        on_owned: Callable[[int], None],
        drain_seconds: float,
    ) -> None:
        self._nc = nc  # the broker's connection, once connected
        self._forget = forget  # drops cached next seqs (ConversationLog.forget_seqs_where)
        self._on_owned = on_owned  # how many partitions are owned now (a gauge)
        self._serve = serve
        self._works = works
        # Conversation-scoped reads (QueryRoute.partitioned), by their plain subject.
        self._queries = queries or {}
        # Batched commands (routes.send_batch_subject): (metrics operation, work) per route,
        # on a second subscription per partition (subjects.partition_batches).
        self._batches = batches or {}
        self._drain_seconds = drain_seconds
        self._subs: dict[int, list[Any]] = {}
        self._tasks: dict[int, set[asyncio.Task[None]]] = {}

    @property
    def owned(self) -> list[int]:
        return sorted(self._subs)

    def owns(self, conversation_id: str) -> bool:
        """Whether this replica serves the conversation's partition subject now."""
        return partition_of(conversation_id) in self._subs

    def holds(self, partition: int) -> bool:
        """Whether this replica owns the partition now."""
        return partition in self._subs

    async def acquire(self, partition: int) -> None:
        """This replica took the partition: another replica wrote its conversations until
        now, so their next seqs come from the log again, not from this replica's cache."""
        self._forget(lambda cid: partition_of(cid) == partition)
        await self.subscribe(partition)
        self._on_owned(len(self._subs))

    async def release(self, partition: int, graceful: bool) -> None:
        await self.unsubscribe(partition, graceful)
        self._forget(lambda cid: partition_of(cid) == partition)
        self._on_owned(len(self._subs))

    async def subscribe(self, partition: int) -> None:
        if partition in self._subs:
            return
        tasks: set[asyncio.Task[None]] = self._tasks.setdefault(partition, set())

        async def on_message(msg: Msg) -> None:
            # nats-py calls this once at a time per subscription: the work runs in its own
            # task (requests of one partition wait for the same group commit together).
            task = asyncio.create_task(self._handle(msg), name=f"partition-{partition}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        nc = self._nc()
        wanted = [subjects.partition_commands(partition)]
        if self._batches:
            wanted.append(subjects.partition_batches(partition))
        subs: list[Any] = []
        for subject in wanted:
            subs.append(
                await nc.subscribe(subject, queue=subjects.QUEUE_CONVERSATION, cb=on_message)
            )
        self._subs[partition] = subs

    async def unsubscribe(self, partition: int, graceful: bool) -> None:
        for sub in self._subs.pop(partition, []):
            try:
                if graceful:
                    await sub.drain()
                else:
                    await sub.unsubscribe()
            except nats.errors.Error as exc:
                logger.warning("partition %d: subscription not drained: %r", partition, exc)
        tasks = self._tasks.get(partition)
        if graceful and tasks:
            _done, pending = await asyncio.wait(set(tasks), timeout=self._drain_seconds)
            if pending:
                logger.warning(
                    "partition %d: %d requests still running after the drain",
                    partition,
                    len(pending),
                )

    async def stop(self) -> None:
        """Drain every partition's subscription and wait for its work (a graceful stop)."""
        await asyncio.gather(*(self.unsubscribe(p, True) for p in list(self._subs)))

    async def _handle(self, msg: Msg) -> None:
        op, work = self._work_of(msg.subject)
        if work is None:  # a subject of the partition this replica does not serve
            logger.error("no route for %s", msg.subject)
            return
        reply = await self._serve(op, msg.data, work)
        if msg.reply:
            try:
                await msg.respond(reply)
            except nats.errors.Error as exc:
                logger.warning("reply on %s not sent: %r", msg.subject, exc)

    def _work_of(self, subject: str) -> tuple[str, Callable[[bytes], Awaitable[Any]] | None]:
        """(metrics operation, work) of a partition's command or query subject."""
        route = route_of_subject(subject)
        if route is not None:
            return route.event.value, self._works.get(route.event)
        route = batch_route_of_subject(subject)
        if route is not None:
            return self._batches.get(route.event, ("", None))
        query = query_route_of_subject(subject)
        if query is not None:
            return query.op, self._queries.get(query.subject)
        return "", None
