"""Partition ownership: which replica writes which conversations (docs/affinity.md).

A replica takes part through the ``subjects.KV_PARTITIONS`` bucket, whose every key expires
after the lease TTL (the bucket's max age) unless written again:

- ``m.<member>``: its heartbeat, put every tick; the live members decide the fair share.
- ``p.<n>``: the lease of partition n, value the owning member; taken with a create (atomic:
  it fails if another replica holds it), refreshed with an update on the revision it holds
  (fails if the lease moved), given up with a delete on that revision.

Every tick (a quarter of the TTL) a replica reads the bucket once, computes the same plan as
every other replica from the same members (:func:`plan`: bounded-load rendezvous hashing,
each member gets 64 / members, give or take one, and a join or a leave moves few
partitions), then: refreshes the leases it holds and should keep; hands off the ones the
plan gives to another member (stop taking, drain, release); takes the free ones the plan
gives to it. A replica that dies (kill -9) stops refreshing: its leases expire after the TTL
and the others take them at their next tick. A replica that could not refresh a lease for
most of a TTL (a NATS outage, a stalled loop) drops it itself, before it can expire.

What a replica does when it takes or gives up a partition (subscribe, drain) is the
caller's: ``on_acquire`` and ``on_release``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats.errors
import nats.js.errors

from parley_contract import kvread, subjects
from parley_contract.partitions import (
    PARTITIONS,
    instance_of_member_key,
    lease_key,
    member_key,
    partition_of_lease_key,
)
from parley_runtime import jetstream, tasks

logger = logging.getLogger(__name__)

# A lease refreshed longer ago than this share of the TTL is dropped by its holder.
DROP_AFTER = 0.8
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

Acquire = Callable[[int], Awaitable[None]]
# (partition, graceful): graceful = drain what was received first (a hand-off or a stop);
# not graceful = the lease is lost already, stop at once.
Release = Callable[[int, bool], Awaitable[None]]


def member_id(instance_id: str) -> str:
    """The instance id as a KV key token (letters, digits, - and _)."""
    return _UNSAFE.sub("_", instance_id)[:200] or "replica"


def plan(members: Sequence[str], partitions: int = PARTITIONS) -> dict[int, str]:
    """Who should own each partition: the same answer on every replica given the same members.

    Rendezvous hashing (each partition ranks the members by a hash of (member, partition))
    with a cap per member (``partitions // members``, one more for the first ones), so
    the shares are fair (they differ by one at most) and a join or a leave moves few."""
    ranked_members = sorted(set(members))
    if not ranked_members:
        return {}
    # Shares differ by one at most: the first (partitions % members) get one more.
    base, extra = divmod(partitions, len(ranked_members))
    cap = {m: base + (1 if i < extra else 0) for i, m in enumerate(ranked_members)}
    load = dict.fromkeys(ranked_members, 0)
    out: dict[int, str] = {}
    for p in range(partitions):
        ranked = sorted(
            ranked_members, key=lambda m: (zlib.crc32(f"{m}/{p}".encode()), m), reverse=True
        )
        for m in ranked:
            if load[m] < cap[m]:
                out[p] = m
                load[m] += 1
                break
    return out


class Ownership:
    """One replica's leases, kept by a periodic tick (start, tick, stop)."""

    def __init__(
        self,
        nc: Any,
        instance_id: str,
        *,
        ttl: float,
        on_acquire: Acquire,
        on_release: Release,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._nc = nc
        self.member = member_id(instance_id)
        self.ttl = ttl
        self.interval = ttl / 4
        self._on_acquire = on_acquire
        self._on_release = on_release
        self._on_change = on_change  # "acquired" / "released" / "lost" (metrics)
        self._kv: Any = None
        self.owned: dict[int, int] = {}  # partition → revision of our lease
        self._refreshed: dict[int, float] = {}  # partition → monotonic time of last write
        self._loop: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one tick at a time (the loop, start, stop)
        self._stopping = False

    async def open(self, want: jetstream.Replicas) -> None:
        self._kv = await jetstream.declare_kv(
            self._nc.jetstream(), subjects.KV_PARTITIONS, want, ttl=self.ttl
        )

    async def start(self) -> None:
        """The first tick now (this replica's share of the free partitions), then the loop."""
        try:
            await self.tick()
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            logger.warning("first partition tick failed (the loop tries again): %r", exc)
        self._loop = asyncio.create_task(
            tasks.every(
                self.interval,
                self.tick,
                what="partition leases",
                expected=(nats.errors.Error, nats.js.errors.Error, TimeoutError),
                log=logger,
            ),
            name="partition-leases",
        )

    async def _end_loop(self) -> None:
        """End the loop: one cancel (a NATS call that swallows it, as nats-py's requests can
        on Python 3.11, ends the loop at that tick's end: tasks.every, tasks.cancellable)."""
        self._stopping = True
        loop, self._loop = self._loop, None
        if loop is not None:
            await tasks.cancel_all([loop])

    async def stop(self) -> None:
        """Give every lease up (after the caller drained its work): the others take over
        at their next tick instead of waiting for the TTL."""
        await self._end_loop()
        async with self._lock:
            given = sorted(self.owned)
            await asyncio.gather(*(self._give_up(p, graceful=True) for p in given))
            if given:
                logger.info("stopping: %d partitions handed off", len(given))
            if self._kv is not None:
                try:
                    await self._kv.delete(member_key(self.member))
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    logger.warning("could not delete the member key: %r", exc)

    async def abandon(self) -> None:
        """Stop the loop and forget the leases without releasing them (a test's crash)."""
        await self._end_loop()
        self.owned.clear()

    # ------------------------------------------------------------ one tick

    async def tick(self) -> None:
        async with self._lock:
            if not self._stopping:
                await self._tick()

    async def _tick(self) -> None:
        assert self._kv is not None, "open() first"
        now = time.monotonic()
        for p in [p for p, at in self._refreshed.items() if now - at > self.ttl * DROP_AFTER]:
            if p in self.owned:
                late = now - self._refreshed[p]
                logger.warning("partition %d: lease not refreshed for %.1f s: dropped", p, late)
                await self._lose(p)
        await self._kv.put(member_key(self.member), b"1")
        members, leases = await self._snapshot()
        members.add(self.member)
        wanted = plan(sorted(members))
        refresh, hand_off = [], []
        for p, rev in list(self.owned.items()):
            held = leases.get(p)
            if held is not None and held != (self.member, rev):
                logger.warning("partition %d: lease lost (now held by %s)", p, held[0])
                await self._lose(p)
            elif wanted.get(p) == self.member:
                # Missing from the snapshot is not proof of loss: a watch during a JetStream
                # leader election can read the bucket short (every lease "held by nobody" in
                # a cluster fault run). The refresh's compare-and-set decides: it fails only
                # if the lease really expired or moved.
                refresh.append(p)
            else:
                hand_off.append(p)
        await asyncio.gather(*(self._refresh(p) for p in refresh))
        # Hand-offs: stop taking, drain, then release (the new owner takes it next tick).
        await asyncio.gather(*(self._give_up(p, graceful=True) for p in hand_off))
        free = [p for p, m in wanted.items() if m == self.member and p not in leases]
        await asyncio.gather(*(self._take(p) for p in free if p not in self.owned))
        if hand_off or free:
            logger.info(
                "%d members: handed off %s, took %s, own %d partitions",
                len(members),
                _ranges(hand_off),
                _ranges([p for p in free if p in self.owned]),
                len(self.owned),
            )

    async def _snapshot(self) -> tuple[set[str], dict[int, tuple[str, int]]]:
        """The live members and every lease ((holder, revision)), in one read of the bucket."""
        members: set[str] = set()
        leases: dict[int, tuple[str, int]] = {}
        for entry in await kvread.live_entries(self._nc.jetstream(), subjects.KV_PARTITIONS):
            p = partition_of_lease_key(entry.key)
            if p is not None:
                leases[p] = (entry.value.decode(errors="replace"), entry.revision)
            elif (m := instance_of_member_key(entry.key)) is not None:
                members.add(m)
        return members, leases

    async def _refresh(self, p: int) -> None:
        try:
            rev = await self._kv.update(lease_key(p), self.member.encode(), last=self.owned[p])
        except nats.js.errors.KeyWrongLastSequenceError:
            logger.warning("partition %d: lease taken over", p)
            await self._lose(p)
            return
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            logger.warning("partition %d: lease not refreshed: %r", p, exc)
            return
        if p in self.owned:
            self.owned[p] = rev
            self._refreshed[p] = time.monotonic()

    async def _take(self, p: int) -> None:
        try:
            rev = await self._kv.create(lease_key(p), self.member.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # someone was faster (its member key not seen yet): the plan settles it
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            logger.warning("partition %d: lease not taken: %r", p, exc)
            return
        self.owned[p] = rev
        self._refreshed[p] = time.monotonic()
        try:
            await self._on_acquire(p)
        except BaseException:
            # Not serving it: give it back at once rather than hold it unserved.
            await self._give_up(p, graceful=False)
            raise
        self._changed("acquired")
        logger.debug("partition %d taken", p)

    async def _give_up(self, p: int, *, graceful: bool) -> None:
        rev = self.owned.pop(p, None)
        self._refreshed.pop(p, None)
        await self._on_release(p, graceful)
        if rev is None or self._kv is None:
            return
        try:
            await self._kv.delete(lease_key(p), last=rev)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            logger.info("partition %d: lease not deleted (it expires): %r", p, exc)
        self._changed("released")
        logger.debug("partition %d handed off", p)

    async def _lose(self, p: int) -> None:
        self.owned.pop(p, None)
        self._refreshed.pop(p, None)
        await self._on_release(p, False)
        self._changed("lost")

    def _changed(self, how: str) -> None:
        if self._on_change is not None:
            self._on_change(how)


def _ranges(partitions: Sequence[int]) -> str:
    """[0, 1, 2, 5] → "0-2,5" (for the logs)."""
    out: list[str] = []
    for p in sorted(partitions):
        if out and out[-1].split("-")[-1] == str(p - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{p}"
        else:
            out.append(str(p))
    return ",".join(out) or "none"
