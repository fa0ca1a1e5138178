"""``kvread`` against a real nats-server: the complete set of live keys of a KV
bucket, also while its keys are rewritten (nats-py's ``KeyValue.keys()`` may answer an empty
or partial list then: nats.py #842, #995), without tombstones, across several fetches, and
without leaving a consumer behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from parley_contract import kvread, subjects

BUCKET = "live_keys_probe"


@pytest.fixture(autouse=True)
async def _drop_bucket(nc: Client) -> AsyncIterator[None]:
    yield
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_key_value(BUCKET)


async def _bucket(nc: Client, *, ttl: float | None = None) -> KeyValue:
    return await nc.jetstream().create_key_value(KeyValueConfig(bucket=BUCKET, ttl=ttl))


async def _listings_while(
    nc: Client, count: int, *writes: Callable[[], Awaitable[object]]
) -> list[list[str]]:
    """``count`` listings of the bucket, each while every one of ``writes`` runs again and
    again."""
    stop = asyncio.Event()

    async def repeat(write: Callable[[], Awaitable[object]]) -> None:
        while not stop.is_set():
            await write()

    writers = [asyncio.create_task(repeat(write)) for write in writes]
    try:
        return [await kvread.live_keys(nc.jetstream(), BUCKET) for _ in range(count)]
    finally:
        stop.set()
        await asyncio.gather(*writers)


async def test_puts_deletes_and_purges(nc: Client) -> None:
    kv = await _bucket(nc)
    assert await kvread.live_keys(nc.jetstream(), BUCKET) == []
    for key in ("a", "b.c", "d", "e"):
        await kv.put(key, b"1")
    await kv.put("a", b"2")  # rewritten: listed once
    await kv.delete("d")
    await kv.purge("e")
    assert await kvread.live_keys(nc.jetstream(), BUCKET) == ["a", "b.c"]


async def test_more_keys_than_one_fetch(nc: Client) -> None:
    kv = await _bucket(nc)
    want = [f"k{i:04d}" for i in range(kvread.BATCH * 2 + 7)]
    await asyncio.gather(*(kv.put(key, b"x") for key in want))
    assert await kvread.live_keys(nc.jetstream(), BUCKET) == want


async def test_expired_keys_are_gone(nc: Client) -> None:
    kv = await _bucket(nc, ttl=1.0)
    await kv.put("short", b"1")
    await asyncio.sleep(1.6)
    await kv.put("fresh", b"1")
    assert await kvread.live_keys(nc.jetstream(), BUCKET) == ["fresh"]


async def test_a_missing_bucket_is_not_found(nc: Client) -> None:
    with pytest.raises(nats.js.errors.NotFoundError):
        await kvread.live_keys(nc.jetstream(), "no_such_bucket")


async def test_complete_while_every_key_is_rewritten(nc: Client) -> None:
    """Heartbeat-like rewrites of every key during each listing: never a missing key (what
    a gateway would take for a crashed instance and reap)."""
    kv = await _bucket(nc)
    want = sorted(f"instance-{i}" for i in range(20))
    for key in want:
        await kv.put(key, b"beat")
    listings = await _listings_while(
        nc, 60, lambda: asyncio.gather(*(kv.put(key, b"beat") for key in want))
    )
    assert all(listing == want for listing in listings), [len(x) for x in listings]
    info = await nc.jetstream().stream_info(subjects.kv_stream(BUCKET))
    assert info.state.consumer_count == 0  # each listing deleted its consumer


async def test_entries_with_values_revisions_pattern_and_limit(nc: Client) -> None:
    kv = await _bucket(nc)
    await kv.put("agent.a.1", b"one")
    rev = await kv.put("agent.b.1", b"two")
    await kv.put("user.c.1", b"three")
    entries = await kvread.live_entries(nc.jetstream(), BUCKET, "agent.>")
    assert [(e.key, e.value) for e in entries] == [("agent.a.1", b"one"), ("agent.b.1", b"two")]
    assert entries[1].revision == rev
    await kv.update("agent.b.1", b"2", last=entries[1].revision)  # what a lease refresh does
    first = await kvread.live_entries(nc.jetstream(), BUCKET, limit=1)
    assert len(first) == 1


async def test_whole_while_one_key_is_rewritten_and_the_others_now_and_then(nc: Client) -> None:
    """Leases refreshed now and then, one key rewritten in a loop: a refreshed lease's entry
    of the snapshot is skipped for its newer one, behind many writes of the busy key (a read
    that stopped after as many messages as the snapshot had lost the leases)."""
    kv = await _bucket(nc)
    leases = sorted(f"lease.{i:02d}" for i in range(32))
    for key in leases:
        await kv.put(key, b"holder")

    async def refresh() -> None:
        for key in leases:
            await kv.put(key, b"holder")
        await asyncio.sleep(0.01)

    async def busy() -> None:
        await asyncio.gather(*(kv.put("busy", b"x") for _ in range(8)))

    listings = await _listings_while(nc, 40, busy, refresh)
    want = sorted([*leases, "busy"])
    assert [len(x) for x in listings if x != want] == []
