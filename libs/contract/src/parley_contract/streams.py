"""JetStream streams shared by several services, defined once.

The conversation service publishes agent turns and the agent bridge consumes them; either may
start first and create the stream. Both must ask for the same configuration, or JetStream
refuses the second with "stream name already in use with a different configuration".
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from parley_contract import subjects
from parley_contract.turnstate import KV_TTL_SECONDS


def agent_turns_stream_config() -> StreamConfig:
    return StreamConfig(
        name=subjects.STREAM_AGENT_TURNS,
        subjects=[subjects.AGENT_TURN],
        retention=RetentionPolicy.WORK_QUEUE,  # each turn is taken by one bridge
        storage=StorageType.FILE,
        duplicate_window=120.0,  # Nats-Msg-Id dedupe of a retried publish
        max_age=7 * 24 * 3600.0,
    )


async def ensure_agent_turns_stream(js: Any) -> None:
    """Create the agent-turns stream unless it exists (idempotent, race-safe)."""
    try:
        await js.stream_info(subjects.STREAM_AGENT_TURNS)
    except NotFoundError:
        with contextlib.suppress(BadRequestError):  # created concurrently by the other side
            await js.add_stream(agent_turns_stream_config())


async def turns_bucket(js: Any) -> KeyValue:
    """The KV bucket of running agent turns (``subjects.KV_TURNS``), created if missing.

    Written by agent bridges and the conversation service, read by gateways (turnstate.py);
    each side may start first, so all ask for this one configuration.
    """
    for _ in range(5):
        try:
            kv: KeyValue = await js.key_value(subjects.KV_TURNS)
            return kv
        except BucketNotFoundError:
            pass
        try:
            kv = await js.create_key_value(
                KeyValueConfig(bucket=subjects.KV_TURNS, history=1, ttl=KV_TTL_SECONDS)
            )
            return kv
        except BadRequestError:
            await asyncio.sleep(0.1)  # created concurrently by another process
    raise RuntimeError(f"cannot open KV bucket {subjects.KV_TURNS}")
