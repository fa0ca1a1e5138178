"""Configuration of one conversation-service replica, from environment variables only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from parley_runtime.mongo import MongoSettings
from parley_runtime.settings import ServiceSettings
from parley_runtime.settings import env as _env


class Settings(MongoSettings, ServiceSettings):
    """A replica's own settings, over the shared ones (parley_runtime.settings) and the
    MongoDB connection's (parley_runtime.mongo: URL, database, TLS)."""

    instance_prefix = "conv"

    # When a write counts as stored (and a reply may say success: true): "journaled" = in
    # the server's journal (w:1, j:true; a kill -9 or power loss of the store keeps it);
    # "majority" = journaled on a majority of a replica set (w:majority, j:true; the
    # production setting); "acknowledged" = in the server's memory only (w:1, j:false: a
    # crash of the store may lose acked writes; for measurements only).
    write_concern: Literal["journaled", "majority", "acknowledged"] = Field(
        default="journaled", validation_alias=_env("PARLEY_CONVERSATION_WRITE_CONCERN")
    )
    http_host: str = Field(
        default="127.0.0.1", validation_alias=_env("PARLEY_CONVERSATION_HTTP_HOST")
    )
    http_port: int = Field(default=8100, validation_alias=_env("PARLEY_CONVERSATION_HTTP_PORT"))
    # Largest accepted request body on NATS (bytes); larger gets PAYLOAD_TOO_LARGE.
    max_request_bytes: int = Field(
        default=256 * 1024, ge=1024, validation_alias=_env("PARLEY_CONVERSATION_MAX_REQUEST_BYTES")
    )
    # Requests handled concurrently per replica (they wait together for a group commit).
    max_concurrency: int = Field(
        default=1000, ge=2, validation_alias=_env("PARLEY_CONVERSATION_MAX_CONCURRENCY")
    )
    # Load shedding: while the oldest queued write has waited longer than this many seconds
    # for its group commit, a new message:send is refused at once (SERVICE_UNAVAILABLE,
    # nothing stored) rather than left to time out at the gateway
    # (PARLEY_GATEWAY_REQUEST_TIMEOUT_SECONDS, 5 s). 0: never.
    max_wait_seconds: float = Field(
        default=2.0, ge=0, le=60, validation_alias=_env("PARLEY_CONVERSATION_MAX_WAIT_SECONDS")
    )
    # Most durable writes of one conversation committed in one batch.
    max_batch: int = Field(
        default=500, ge=1, validation_alias=_env("PARLEY_CONVERSATION_MAX_BATCH")
    )
    # Largest history reply (QUERY_EVENTS_SINCE, QUERY_MESSAGES_LIST) in bytes: a page is cut
    # there (hasMore: true), always keeping one item; never above the NATS max payload.
    max_reply_bytes: int = Field(
        default=512 * 1024, ge=1024, validation_alias=_env("PARLEY_CONVERSATION_MAX_REPLY_BYTES")
    )
    # When busy, the conversation totals (totalMessages, lastMessage, lastSeq...) are written
    # at most once per this many seconds per replica, merged (0: after every write).
    totals_interval_seconds: float = Field(
        default=0.25,
        ge=0,
        le=10,
        validation_alias=_env("PARLEY_CONVERSATION_TOTALS_INTERVAL_SECONDS"),
    )
    # Read and delivery receipts (conversation:read, message:delivered) and
    # conversation:activity are coalesced: at most one event per conversation per this many
    # seconds, carrying every cursor that moved (docs/protocol.md 3.6).
    receipts_window_seconds: float = Field(
        default=0.5,
        ge=0.01,
        le=10,
        validation_alias=_env("PARLEY_CONVERSATION_RECEIPTS_WINDOW_SECONDS"),
    )
    # Conversation affinity (docs/affinity.md): a partition lease (and a replica's
    # heartbeat) expires this many seconds after its last refresh (every quarter of it): a
    # killed replica's partitions get a new owner after at most ~1.25 times this (meanwhile
    # any replica takes their writes: the gateways' fallback). Long enough that a replica
    # busy for seconds keeps its leases (3 s lost them under load: the bench). The same on
    # every replica (it is the partitions bucket's max age).
    lease_seconds: float = Field(
        default=10.0, ge=0.4, le=60, validation_alias=_env("PARLEY_CONVERSATION_LEASE_SECONDS")
    )
    # Seconds a SIGTERM waits for in-flight batches before giving up.
    drain_seconds: float = Field(
        default=20.0, ge=0, validation_alias=_env("PARLEY_CONVERSATION_DRAIN_SECONDS")
    )
    # Attachments (issue 17): how long the signed download URL in a message works (the
    # key is made once per deployment and kept in the store: attachments.signing_key).
    attachments_url_ttl_seconds: float = Field(
        default=3600.0,
        ge=60,
        le=7 * 86400,
        validation_alias=_env("PARLEY_ATTACHMENTS_URL_TTL_SECONDS"),
    )
