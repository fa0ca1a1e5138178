"""JetStream assets shared by several services, defined once.

The conversation service publishes agent turns and the agent bridge consumes them; either may
start first and create the stream (``parley_runtime.jetstream`` declares it, with the
replicas of the deployment). Both ask for this one configuration.
"""

from __future__ import annotations

from nats.js.api import RetentionPolicy, StorageType, StreamConfig

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
