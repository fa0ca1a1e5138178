"""The settings every Parley service reads, in one base class.

Each service's ``Settings`` extends :class:`ServiceSettings` with its own fields
(``PARLEY_<SERVICE>_...``); the shared ones (NATS, environment, logging, instance id) are
declared once here, with the same environment names everywhere (docs/configuration.md).
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_contract.ids import new_id

DEVELOPMENT = "development"


def env(name: str) -> AliasChoices:
    """The environment variable a field is read from (the field name works too, in code)."""
    return AliasChoices(name)


def default_instance_id(prefix: str) -> str:
    """``<prefix>-<host>-<random>``: unique per process, readable in logs and metrics."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40]
    return f"{prefix}-{host}-{new_id('i')[-8:]}"


class ServiceSettings(BaseSettings):
    """The shared fields. Subclasses set :attr:`instance_prefix` and add their own fields."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # The default instance id is ``<instance_prefix>-<host>-<random>``.
    instance_prefix: ClassVar[str] = "parley"

    # One server or a comma-separated list (any of them; the client learns the rest of the
    # cluster from the server it reaches).
    nats_url: str = Field(default="nats://127.0.0.1:4222", validation_alias=env("NATS_URL"))
    # Credentials, unless in the URL (nats://user:password@host): this service's NATS user
    # (one per role: parley_contract.nats_auth).
    nats_user: str | None = Field(default=None, validation_alias=env("NATS_USER"))
    nats_password: SecretStr | None = Field(default=None, validation_alias=env("NATS_PASSWORD"))
    # TLS to NATS: the CA that signed the servers' certificates (PEM file; also turns TLS
    # on), and a client certificate and key for servers that verify clients (mutual TLS).
    nats_ca: str | None = Field(default=None, validation_alias=env("NATS_CA"))
    nats_cert: str | None = Field(default=None, validation_alias=env("NATS_CERT"))
    nats_key: str | None = Field(default=None, validation_alias=env("NATS_KEY"))
    # Replicas of every KV bucket and stream (1-5); unset or "auto": 3 when the cluster has
    # at least 3 servers, else 1 (parley_runtime.jetstream.replicas).
    nats_replicas: int | None = Field(
        default=None, ge=1, le=5, validation_alias=env("PARLEY_NATS_REPLICAS")
    )
    environment: str = Field(default=DEVELOPMENT, validation_alias=env("PARLEY_ENVIRONMENT"))
    log_level: str = Field(default="INFO", validation_alias=env("PARLEY_LOG_LEVEL"))
    instance_id: str = Field(default="", validation_alias=env("PARLEY_INSTANCE_ID"))

    @field_validator(
        "nats_user",
        "nats_password",
        "nats_ca",
        "nats_cert",
        "nats_key",
        "nats_replicas",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return value

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str) -> str:
        value = value.strip().lower()
        if not value:
            raise ValueError("PARLEY_ENVIRONMENT must not be empty")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.strip().upper()
        if not isinstance(logging.getLevelNamesMapping().get(value), int):
            raise ValueError(f"PARLEY_LOG_LEVEL: unknown level {value!r}")
        return value

    @field_validator("nats_url")
    @classmethod
    def _nats_urls(cls, value: str) -> str:
        if not [u for u in value.split(",") if u.strip()]:
            raise ValueError("NATS_URL must name at least one server")
        return value

    @model_validator(mode="after")
    def _instance_id(self) -> ServiceSettings:
        if not self.instance_id:
            self.instance_id = default_instance_id(self.instance_prefix)
        return self

    @property
    def development(self) -> bool:
        return self.environment == DEVELOPMENT

    @property
    def nats_servers(self) -> list[str]:
        """``NATS_URL`` split on commas (each one a URL, ``nats://`` added when missing)."""
        servers = []
        for raw in self.nats_url.split(","):
            url = raw.strip()
            if url:
                servers.append(url if "://" in url else f"nats://{url}")
        return servers

    def nats_auth_options(self) -> dict[str, Any]:
        """``nats.connect`` credentials from the settings (none: the URL's, if any)."""
        options: dict[str, Any] = {}
        if self.nats_user:
            options["user"] = self.nats_user
            if self.nats_password is not None:
                options["password"] = self.nats_password.get_secret_value()
        return options

    def nats_tls_context(self) -> ssl.SSLContext | None:
        """TLS to NATS: with ``NATS_CA`` (or a client certificate, or a ``tls://`` URL)."""
        wants_tls = any(u.startswith("tls://") for u in self.nats_servers)
        if not (self.nats_ca or self.nats_cert or wants_tls):
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.nats_ca)
        if self.nats_cert:
            context.load_cert_chain(self.nats_cert, self.nats_key)
        return context

    def check(self) -> None:
        """Refuse a configuration that must not run (raise ValueError with the reason);
        called by the runner before anything starts. Subclasses extend it."""
        for name, path in (
            ("NATS_CA", self.nats_ca),
            ("NATS_CERT", self.nats_cert),
            ("NATS_KEY", self.nats_key),
        ):
            if path and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        if self.nats_key and not self.nats_cert:
            raise ValueError("NATS_KEY is set without NATS_CERT")
        if self.nats_password is not None and not self.nats_user:
            raise ValueError("NATS_PASSWORD is set without NATS_USER")
        if self.nats_cert or self.nats_ca:
            try:
                self.nats_tls_context()
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"NATS TLS files: {exc}") from None
        check_mongo = getattr(self, "check_mongo", None)  # with parley_runtime.mongo mixed in
        if callable(check_mongo):
            check_mongo()
