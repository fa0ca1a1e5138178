"""The settings every Parley service reads, in one base class.

Each service's ``Settings`` extends :class:`ServiceSettings` with its own fields
(``PARLEY_<SERVICE>_...``); the shared ones (NATS, environment, logging, instance id) are
declared once here, with the same environment names everywhere (docs/configuration.md).
"""

from __future__ import annotations

import logging
import socket
from typing import ClassVar

from pydantic import AliasChoices, Field, field_validator, model_validator
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
    environment: str = Field(default=DEVELOPMENT, validation_alias=env("PARLEY_ENVIRONMENT"))
    log_level: str = Field(default="INFO", validation_alias=env("PARLEY_LOG_LEVEL"))
    instance_id: str = Field(default="", validation_alias=env("PARLEY_INSTANCE_ID"))

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

    def check(self) -> None:
        """Refuse a configuration that must not run (raise ValueError with the reason);
        called by the runner before anything starts. Subclasses extend it."""
