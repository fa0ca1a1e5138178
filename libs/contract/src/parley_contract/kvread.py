"""Reading a KV bucket whole: its live entries, complete as of the call.

Not nats-py's ``KeyValue.keys()`` or ``watch()``: the watcher can put its "caught up" marker
ahead of entries already on their way, and a message's ``delta`` can read 0 too early under
concurrent writes (nats.py #842, #995). Under load ``keys()`` then answers an empty or
partial list for a full bucket (20 heartbeat keys rewritten while listing: wrong in 47 of
200 listings here); a gateway took every other instance for gone, the scaling endpoint
counted 0 agents.

Here a pull consumer of each key's last entry is created first. It sends nothing until
asked, and every message it sends carries the server's count of what is left for it: the
entries are fetched in batches until that count is 0, and the consumer is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from parley_contract import subjects

DELETED = frozenset({"DEL", "PURGE"})  # the KV-Operation header of a tombstone
BATCH = 512
FETCH_SECONDS = 1.0
READ_SECONDS = 10.0  # the whole read, however many fetches time out


@dataclasses.dataclass(frozen=True, slots=True)
class LiveEntry:
    key: str
    value: bytes  # empty when read with ``values=False``
    revision: int  # the entry's stream sequence, as ``KeyValue.update(last=...)`` takes


async def live_entries(
    js: Any,
    bucket: str,
    pattern: str = ">",
    *,
    values: bool = True,
    limit: int | None = None,
) -> list[LiveEntry]:
    """The live entries of ``bucket`` whose key matches the subject-style ``pattern``, by key.

    ``limit``: stop after that many. ``nats.js.errors.NotFoundError`` when the bucket does not
    exist; ``nats.errors.TimeoutError`` when the entries do not all arrive.
    """
    prefix = subjects.kv_key_subject(bucket, "")
    stream = subjects.kv_stream(bucket)
    config = ConsumerConfig(
        filter_subject=prefix + pattern,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NONE,
        headers_only=not values,
        mem_storage=True,
        inactive_threshold=30.0,  # deleted below; this only bounds a lost delete
    )
    info = await js.add_consumer(stream, config)
    found: dict[str, LiveEntry] = {}
    try:
        if info.num_pending:
            sub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
            try:
                await _read(sub, prefix, found, limit)
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
    finally:
        # Bounded: this also runs when the caller's deadline cancelled the read.
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await asyncio.wait_for(js.delete_consumer(stream, info.name), FETCH_SECONDS)
    return [found[key] for key in sorted(found)]


async def _read(sub: Any, prefix: str, found: dict[str, LiveEntry], limit: int | None) -> None:
    """Read until the consumer has nothing more (a message's own ``num_pending`` 0).

    Not "as many messages as were pending at creation": an entry of the snapshot rewritten
    meanwhile is skipped for its newer one, which comes after the writes of other keys made
    since, so a count of messages would stop short of it (a bucket with a key rewritten in
    a loop read back without its leases)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_SECONDS
    read = 0
    while True:
        try:
            msgs = await sub.fetch(BATCH, timeout=FETCH_SECONDS)
        except TimeoutError:  # asyncio's, as nats-py's fetch raises it
            # A fetch can time out with entries sent and still on their way (a loaded box):
            # they land in the subscription's queue, where the next fetch takes them first.
            # Done when the consumer has nothing left and delivered nothing unread (entries
            # that expired after the snapshot never come).
            info = await sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered is not None else 0
            if not info.num_pending and (delivered or 0) <= read:
                return
            if loop.time() > deadline:
                raise
            continue
        for msg in msgs:
            read += 1
            key = msg.subject.removeprefix(prefix)
            if (msg.headers or {}).get("KV-Operation") in DELETED:
                found.pop(key, None)  # deleted after the snapshot's entry was read
            else:
                found[key] = LiveEntry(key, msg.data, msg.metadata.sequence.stream)
                if limit is not None and len(found) >= limit:
                    return
        if msgs and not msgs[-1].metadata.num_pending:
            return
        if loop.time() > deadline:
            raise nats.errors.TimeoutError


async def live_keys(js: Any, bucket: str, pattern: str = ">") -> list[str]:
    """The live keys of ``bucket`` matching ``pattern``, sorted (see ``live_entries``)."""
    return [e.key for e in await live_entries(js, bucket, pattern, values=False)]
