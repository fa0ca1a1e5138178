"""Configuration of one gateway instance, from environment variables only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from parley_contract.attachments import DEFAULT_ALLOWED_TYPES, allowed_types
from parley_contract.auth import DEV_JWT_SECRET, JwtConfig, check_secret_for_environment
from parley_contract.claims import parse_kind_rules
from parley_contract.limits import MAX_CONTENT_CHARS
from parley_gateway.origins import OriginPolicy
from parley_runtime.filestore import FileStoreSettings
from parley_runtime.settings import ServiceSettings
from parley_runtime.settings import env as _env


def _default_web_dist() -> str | None:
    # <repo>/services/gateway/src/parley_gateway/settings.py → <repo>/web/dist
    candidate = Path(__file__).resolve().parents[4] / "web" / "dist"
    return str(candidate) if candidate.is_dir() else None


class Settings(FileStoreSettings, ServiceSettings):  # store settings shared with bridges
    """The gateway's own settings, over the shared ones (parley_runtime.settings)."""

    instance_prefix = "gw"

    jwt_algorithm: Literal["HS256", "RS256"] = Field(
        default="HS256", validation_alias=_env("PARLEY_JWT_ALGORITHM")
    )
    jwt_secret: str | None = Field(
        default=DEV_JWT_SECRET, validation_alias=_env("PARLEY_JWT_SECRET")
    )
    jwt_public_key: str | None = Field(default=None, validation_alias=_env("PARLEY_JWT_PUBLIC_KEY"))
    # An identity provider (docs/security.md "Identity providers"): keys from its JWKS URL,
    # RS256/ES256/EdDSA; issuer and audience are then required.
    jwt_jwks_url: str | None = Field(default=None, validation_alias=_env("PARLEY_JWT_JWKS_URL"))
    jwt_issuer: str | None = Field(default=None, validation_alias=_env("PARLEY_JWT_ISSUER"))
    jwt_audience: str | None = Field(default=None, validation_alias=_env("PARLEY_JWT_AUDIENCE"))
    jwt_leeway_seconds: int = Field(
        default=5, ge=0, le=300, validation_alias=_env("PARLEY_JWT_LEEWAY_SECONDS")
    )
    # At most one refetch of the key set per this many seconds for an unknown kid (and no
    # fetch for this long after a failed one); the set is refetched anyway after 5 minutes.
    jwt_jwks_min_refresh_seconds: float = Field(
        default=30.0, ge=0, le=3600, validation_alias=_env("PARLEY_JWT_JWKS_MIN_REFRESH_SECONDS")
    )
    jwt_id_claim: str = Field(
        default="sub", min_length=1, validation_alias=_env("PARLEY_JWT_ID_CLAIM")
    )
    jwt_name_claim: str = Field(
        default="name", min_length=1, validation_alias=_env("PARLEY_JWT_NAME_CLAIM")
    )
    jwt_kind_rules: str = Field(default="", validation_alias=_env("PARLEY_JWT_KIND_RULES"))

    host: str = Field(default="127.0.0.1", validation_alias=_env("PARLEY_GATEWAY_HOST"))
    port: int = Field(default=8001, validation_alias=_env("PARLEY_GATEWAY_PORT"))
    # Largest accepted WebSocket frame (bytes); a bigger one closes the connection with 1009.
    max_frame_bytes: int = Field(
        default=64 * 1024, ge=1024, validation_alias=_env("PARLEY_GATEWAY_MAX_FRAME_BYTES")
    )
    # Sustained commands per second per connection (token bucket, burst = 2x).
    commands_per_second: float = Field(
        default=20.0, gt=0, validation_alias=_env("PARLEY_GATEWAY_COMMANDS_PER_SECOND")
    )
    max_conversations: int = Field(
        default=100, ge=1, validation_alias=_env("PARLEY_GATEWAY_MAX_CONVERSATIONS")
    )
    # Bytes waiting in a connection's socket write buffer; beyond it the client is closed 1013.
    send_queue_limit: int = Field(
        default=1024 * 1024, ge=4096, validation_alias=_env("PARLEY_GATEWAY_SEND_QUEUE_LIMIT")
    )
    heartbeat_seconds: float = Field(
        default=20.0, gt=0, validation_alias=_env("PARLEY_GATEWAY_HEARTBEAT_SECONDS")
    )
    session_ttl_seconds: float = Field(
        default=120.0, ge=5, validation_alias=_env("PARLEY_GATEWAY_SESSION_TTL_SECONDS")
    )
    presence_ttl_seconds: float = Field(
        default=30.0, ge=3, validation_alias=_env("PARLEY_GATEWAY_PRESENCE_TTL_SECONDS")
    )
    # SIGTERM: clients are closed with 1001 spread over this many seconds.
    drain_seconds: float = Field(
        default=5.0, ge=0, validation_alias=_env("PARLEY_GATEWAY_DRAIN_SECONDS")
    )
    # NATS request timeout for commands and queries.
    request_timeout_seconds: float = Field(
        default=5.0, gt=0, validation_alias=_env("PARLEY_GATEWAY_REQUEST_TIMEOUT_SECONDS")
    )
    # First attempt's timeout within that budget: a command in flight to a replica that died
    # is sent again (same idempotency key) after this long — or after the recent reply times
    # allow (srtt + 4 rttvar, at most half the budget) when the service is slower than this;
    # each later attempt waits twice as long as the one before, all within
    # PARLEY_GATEWAY_REQUEST_TIMEOUT_SECONDS.
    attempt_timeout_seconds: float = Field(
        default=0.75, gt=0, validation_alias=_env("PARLEY_GATEWAY_ATTEMPT_TIMEOUT_SECONDS")
    )
    # How long an out-of-order durable event waits for the missing seq before a store fetch.
    gap_wait_seconds: float = Field(
        default=0.2, ge=0, validation_alias=_env("PARLEY_GATEWAY_GAP_WAIT_SECONDS")
    )
    # How often delivered seqs of sessions are written to the session KV (crash resume).
    session_flush_seconds: float = Field(
        default=0.25, gt=0, validation_alias=_env("PARLEY_GATEWAY_SESSION_FLUSH_SECONDS")
    )
    # How often delivery receipts are reported to the conversation service: how far each
    # principal's connections received each conversation (batched; docs/protocol.md 3.6).
    delivery_report_seconds: float = Field(
        default=0.5,
        gt=0,
        le=60,
        validation_alias=_env("PARLEY_GATEWAY_DELIVERY_REPORT_SECONDS"),
    )
    # Browser origins allowed besides the gateway's own (same host as the request's Host) and,
    # in development, localhost: comma-separated scheme://host[:port], or * (see origins.py).
    allowed_origins: str = Field(
        default="", validation_alias=_env("PARLEY_GATEWAY_ALLOWED_ORIGINS")
    )
    # The HTTP side of the public port (front.py). A request head (request line + headers)
    # larger than this gets 431 (first request) or 400; one not complete this many seconds
    # after its first byte gets 408; both close the connection.
    max_head_bytes: int = Field(
        default=16 * 1024, ge=1024, validation_alias=_env("PARLEY_GATEWAY_MAX_HEAD_BYTES")
    )
    head_timeout_seconds: float = Field(
        default=10.0, gt=0, validation_alias=_env("PARLEY_GATEWAY_HEAD_TIMEOUT_SECONDS")
    )
    # Processes serving the port (SO_REUSEPORT), each a whole gateway instance (workers.py);
    # ``worker``: set by the gateway itself in each worker (1..workers), 0 in the parent.
    workers: int = Field(default=1, ge=1, le=64, validation_alias=_env("PARLEY_GATEWAY_WORKERS"))
    worker: int = Field(default=0, ge=0, le=64, validation_alias=_env("PARLEY_GATEWAY_WORKER"))
    # The collector's first-generation threshold (gc.set_threshold; CPython's default 700):
    # larger spares a connect burst or a reconnect storm most of its collections of the
    # connections (docs/benchmarks.md "The gateway's collector"); a young collection then
    # scans up to this many objects at once and a garbage cycle waits that much longer.
    gc_gen0: int = Field(
        default=10_000, ge=100, le=1_000_000, validation_alias=_env("PARLEY_GATEWAY_GC_GEN0")
    )
    # Idle HTTP keep-alive connections are closed after this many seconds (whole seconds).
    http_keepalive_seconds: float = Field(
        default=5.0, ge=1, validation_alias=_env("PARLEY_GATEWAY_HTTP_KEEPALIVE_SECONDS")
    )
    # Largest HTTP request body (bytes) unless a route sets its own ``max_body_size``;
    # larger gets 413 PAYLOAD_TOO_LARGE and the connection is closed.
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=0, validation_alias=_env("PARLEY_GATEWAY_MAX_BODY_BYTES")
    )
    # Attachments (issue 17; store settings: FileStoreSettings). Largest upload in bytes
    # (413 beyond), the media types an upload may declare (415 otherwise; "image/*" and "*"
    # work); the signed download URLs' key is in the store (attachments.signing_key).
    attachments_max_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, validation_alias=_env("PARLEY_ATTACHMENTS_MAX_BYTES")
    )
    attachments_allowed_types: str = Field(
        default=DEFAULT_ALLOWED_TYPES, validation_alias=_env("PARLEY_ATTACHMENTS_ALLOWED_TYPES")
    )
    web_dist: str | None = Field(
        default_factory=_default_web_dist, validation_alias=_env("PARLEY_GATEWAY_WEB_DIST")
    )

    @field_validator("jwt_jwks_url", "jwt_issuer", "jwt_audience", "jwt_public_key")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("jwt_kind_rules")
    @classmethod
    def _valid_kind_rules(cls, value: str) -> str:
        parse_kind_rules(value)
        return value

    def jwt_config(self) -> JwtConfig:
        return JwtConfig(
            algorithm=self.jwt_algorithm,
            secret=self.jwt_secret,
            public_key=self.jwt_public_key,
            jwks_url=self.jwt_jwks_url,
            issuer=self.jwt_issuer,
            audience=self.jwt_audience,
            leeway_seconds=self.jwt_leeway_seconds,
            jwks_min_refresh_seconds=self.jwt_jwks_min_refresh_seconds,
            id_claim=self.jwt_id_claim,
            name_claim=self.jwt_name_claim,
            kind_rules=parse_kind_rules(self.jwt_kind_rules),
        )

    def origin_policy(self) -> OriginPolicy:
        return OriginPolicy(self.allowed_origins, development=self.development)

    def check(self) -> None:
        """Refuse the development secret outside development."""
        super().check()
        check_secret_for_environment(self.environment, self.jwt_config())

    def upload_types(self) -> frozenset[str]:
        return allowed_types(self.attachments_allowed_types)

    def limits(self) -> dict[str, object]:
        """The limits announced in connected.limits."""
        return {
            "maxFrameBytes": self.max_frame_bytes,
            # The contract's limit (limits.py), checked where message:send/edit is validated.
            "maxContentChars": MAX_CONTENT_CHARS,
            "commandsPerSecond": self.commands_per_second,
            "maxConversations": self.max_conversations,
            "sendQueueBytes": self.send_queue_limit,
        }
