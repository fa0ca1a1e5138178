"""MongoDB connection settings shared by the services that open the store (the conversation
service; gateways for attachments): the URL, the database, and TLS (issue 18).

TLS may also be asked for in the URL (``?tls=true&tlsCAFile=...``); the settings are for
deployments that mount the CA and a client certificate as files (docs/security.md, "TLS").
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_runtime.settings import env


class MongoSettings(BaseSettings):
    """Mixed into a service's Settings (``class Settings(MongoSettings, ServiceSettings)``)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    mongodb_url: str = Field(
        default="mongodb://127.0.0.1:27017", validation_alias=env("MONGODB_URL")
    )
    mongodb_database: str = Field(default="parley", validation_alias=env("MONGODB_DATABASE"))
    # TLS to MongoDB: on (true), off (false), or as the URL says (unset). A CA file or a client
    # certificate turns it on.
    mongodb_tls: bool | None = Field(default=None, validation_alias=env("MONGODB_TLS"))
    mongodb_tls_ca_file: str | None = Field(
        default=None, validation_alias=env("MONGODB_TLS_CA_FILE")
    )
    # The client certificate and its private key in one PEM file (x.509 authentication or a
    # server that verifies clients).
    mongodb_tls_cert_key_file: str | None = Field(
        default=None, validation_alias=env("MONGODB_TLS_CERT_KEY_FILE")
    )

    @field_validator(
        "mongodb_tls", "mongodb_tls_ca_file", "mongodb_tls_cert_key_file", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def mongo_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AsyncMongoClient`` (TLS; nothing when unset)."""
        options: dict[str, Any] = {}
        if self.mongodb_tls is not None:
            options["tls"] = self.mongodb_tls
        if self.mongodb_tls_ca_file:
            options["tls"] = True
            options["tlsCAFile"] = self.mongodb_tls_ca_file
        if self.mongodb_tls_cert_key_file:
            options["tls"] = True
            options["tlsCertificateKeyFile"] = self.mongodb_tls_cert_key_file
        return options

    def check_mongo(self) -> None:
        """Refuse missing or unreadable TLS files (ValueError), and TLS files with TLS off."""
        for name, path in (
            ("MONGODB_TLS_CA_FILE", self.mongodb_tls_ca_file),
            ("MONGODB_TLS_CERT_KEY_FILE", self.mongodb_tls_cert_key_file),
        ):
            if path and not Path(path).is_file():
                raise ValueError(f"{name}: no such file: {path}")
        if self.mongodb_tls is False and (
            self.mongodb_tls_ca_file or self.mongodb_tls_cert_key_file
        ):
            raise ValueError("MONGODB_TLS is false but a MongoDB TLS file is set")
        try:
            if self.mongodb_tls_ca_file:
                ssl.create_default_context(cafile=self.mongodb_tls_ca_file)
            if self.mongodb_tls_cert_key_file:
                context = ssl.create_default_context()
                context.load_cert_chain(self.mongodb_tls_cert_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"MongoDB TLS files: {exc}") from None
