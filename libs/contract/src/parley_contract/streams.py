"""JetStream streams shared by several services, defined once.

The conversation service publishes agent turns and the agent bridge consumes them; either may
start first and create the stream. Both must ask for the same configuration, or JetStream
refuses the second with "stream name already in use with a different configuration".
"""

from __future__ import annotations

import contextlib
from typing import Any

from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from parley_contract import subjects


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
