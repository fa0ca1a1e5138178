"""JetStream assets declared one way by every service: open, create if missing, and update
an existing one to the wanted replicas (and TTL), race-safe between services that start at
the same time (issue 19).

Replication (``PARLEY_NATS_REPLICAS``): unset means 3 when the cluster has at least three
servers (those the client knows: ``NATS_URL`` and what the server announced), else 1. In
that automatic mode an existing asset is never scaled down (a service that starts while a
node is away sees a smaller cluster); an explicit setting is applied both ways.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StreamConfig, StreamInfo
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from parley_contract import subjects
from parley_contract.streams import agent_turns_stream_config
from parley_contract.turnstate import KV_TTL_SECONDS
from parley_runtime.settings import ServiceSettings

logger = logging.getLogger(__name__)

AUTO_REPLICAS = 3
MAX_REPLICAS = 5  # JetStream's limit


@dataclasses.dataclass(frozen=True)
class Replicas:
    """How many replicas a service asks for, and whether it was told (else: automatic)."""

    count: int
    explicit: bool

    def wanted(self, current: int) -> int:
        """The replicas an existing asset with ``current`` should have."""
        if self.explicit:
            return self.count
        return max(self.count, current)  # automatic: never down


def cluster_size(nc: Client, settings: ServiceSettings) -> int:
    """Servers of the cluster this client knows: configured ones and announced ones."""
    known = {(u.hostname, u.port) for u in nc.servers}
    return max(len(known), len(settings.nats_servers), 1)


def replicas(nc: Client, settings: ServiceSettings) -> Replicas:
    if settings.nats_replicas is not None:
        return Replicas(settings.nats_replicas, explicit=True)
    count = AUTO_REPLICAS if cluster_size(nc, settings) >= AUTO_REPLICAS else 1
    return Replicas(count, explicit=False)


async def declare_stream(js: Any, config: StreamConfig, want: Replicas) -> StreamInfo:
    """The stream ``config.name`` exists with the wanted replicas (created or updated)."""
    assert config.name is not None
    config = dataclasses.replace(config, num_replicas=want.count)
    try:
        info: StreamInfo = await js.stream_info(config.name)
    except NotFoundError:
        try:
            info = await js.add_stream(config)
            logger.info("created stream %s (replicas %d)", config.name, want.count)
            return info
        except BadRequestError:  # created meanwhile by another process
            info = await js.stream_info(config.name)
    return await _scale(js, info, want)


async def declare_kv(
    js: Any, bucket: str, want: Replicas, *, ttl: float | None = None, history: int = 1
) -> KeyValue:
    """The KV bucket, with the wanted replicas and TTL (created or updated)."""
    stream = f"KV_{bucket}"
    try:
        info: StreamInfo = await js.stream_info(stream)
    except NotFoundError:
        try:
            kv: KeyValue = await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=history, ttl=ttl, replicas=want.count)
            )
            logger.info("created KV bucket %s (replicas %d)", bucket, want.count)
            return kv
        except BadRequestError:  # created meanwhile by another process
            info = await js.stream_info(stream)
    await _scale(js, info, want, max_age=ttl)
    kv = await js.key_value(bucket)
    return kv


async def _scale(
    js: Any, info: StreamInfo, want: Replicas, *, max_age: float | None = None
) -> StreamInfo:
    config = info.config
    current = config.num_replicas or 1
    replicas = want.wanted(current)
    changes: dict[str, Any] = {}
    if replicas != current:
        changes["num_replicas"] = replicas
    if max_age is not None and abs((config.max_age or 0.0) - max_age) > 0.001:
        changes["max_age"] = max_age
        # JetStream refuses a duplicate window longer than the max age (KV buckets have one).
        if config.duplicate_window and max_age and config.duplicate_window > max_age:
            changes["duplicate_window"] = max_age
    if not changes:
        return info
    logger.info("updating %s: %s", config.name, changes)
    try:
        updated: StreamInfo = await js.update_stream(dataclasses.replace(config, **changes))
    except ServiceUnavailableError:
        raise  # no quorum: retried by the caller
    except APIError as exc:
        # Refused for good (e.g. not enough servers for the replicas): keep what exists,
        # loudly; the next start tries again.
        logger.error("%s not updated to %s: %r", config.name, changes, exc)
        return info
    return updated


async def declare_agent_turns_stream(js: Any, want: Replicas) -> StreamInfo:
    """The work-queue stream of agent turns (conversation service publishes, bridges take)."""
    return await declare_stream(js, agent_turns_stream_config(), want)


async def declare_turns_bucket(js: Any, want: Replicas) -> KeyValue:
    """The KV bucket of running agent turns (bridges and the conversation service write it,
    gateways read it: parley_contract.turnstate); whoever starts first creates it."""
    return await declare_kv(js, subjects.KV_TURNS, want, ttl=KV_TTL_SECONDS)
