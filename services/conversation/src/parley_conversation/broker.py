"""FastStream's NatsBroker with the runtime's connection options (parley_runtime.bus):
the servers of ``NATS_URL``, the role's inbox prefix, reconnects forever, credentials, TLS."""

from __future__ import annotations

import logging
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.security import NatsUserPassword
from faststream.security import BaseSecurity

from parley_conversation.settings import Settings
from parley_runtime import bus


def make_broker(settings: Settings, **kwargs: Any) -> NatsBroker:
    options = bus.connect_options(settings, "conversation")
    tls = options.pop("tls", None)
    user = options.pop("user", None)
    password = options.pop("password", None)
    security: BaseSecurity | None = None
    if user is not None:
        security = NatsUserPassword(user, password or "", ssl_context=tls)
    elif tls is not None:
        security = BaseSecurity(ssl_context=tls)
    return NatsBroker(**options, security=security, log_level=logging.DEBUG, **kwargs)
