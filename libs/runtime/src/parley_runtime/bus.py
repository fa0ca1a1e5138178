"""The NATS connection of a service: one set of options, connected with capped backoff.

- ``NATS_URL`` may list several servers (comma-separated); the client also learns the rest
  of the cluster from the server it reaches, and reconnects to any of them, forever.
- Credentials: ``NATS_USER``/``NATS_PASSWORD`` (or in the URL);
  TLS: ``NATS_CA`` (and optionally ``NATS_CERT``/``NATS_KEY``), see docs/security.md.
- Each role has its own inbox prefix (parley_contract.nats_auth: it may subscribe only there).
"""

from __future__ import annotations

import logging
from typing import Any

import nats
from nats.aio.client import Client

from parley_contract import nats_auth
from parley_runtime.retry import retry
from parley_runtime.settings import ServiceSettings

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 3
RECONNECT_WAIT_SECONDS = 1


async def _log_error(exc: Exception) -> None:
    logger.warning("NATS: %s", exc or type(exc).__name__)


async def _log_disconnected() -> None:
    logger.warning("NATS disconnected; reconnecting")


async def _log_reconnected() -> None:
    logger.info("NATS reconnected")


def connect_options(settings: ServiceSettings, role: nats_auth.Role) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` (and FastStream's NatsBroker connection)."""
    options: dict[str, Any] = {
        "servers": settings.nats_servers,
        "name": f"parley-{role} {settings.instance_id}",
        "inbox_prefix": nats_auth.inbox_prefix(role),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RECONNECT_WAIT_SECONDS,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "error_cb": _log_error,
        "disconnected_cb": _log_disconnected,
        "reconnected_cb": _log_reconnected,
    }
    options.update(settings.nats_auth_options())
    tls = settings.nats_tls_context()
    if tls is not None:
        options["tls"] = tls
    return options


async def connect(settings: ServiceSettings, role: nats_auth.Role, **overrides: Any) -> Client:
    """Connected to NATS, retrying with capped backoff until a server answers."""
    options = {**connect_options(settings, role), **overrides}

    async def attempt() -> Client:
        nc: Client = await nats.connect(**options)
        return nc

    nc = await retry("connecting to NATS", attempt)
    logger.info(
        "connected to NATS %s", _safe(str(nc.connected_url.netloc if nc.connected_url else ""))
    )
    return nc


async def flush(nc: Client, wait: int = 5) -> None:
    """Return once the server has processed everything sent on ``nc`` so far, the
    subscriptions just made included (their interest is then in place on that server).

    nats-py's own ``flush()`` does not promise that: it writes its PING straight to the
    socket, ahead of the commands still queued for its flusher task (the SUBs of
    ``subscribe()`` wait there), so its PONG can come back before the server has read them.
    A request sent meanwhile from another connection finds no responders (seen for a
    conversation replica's first request after start, under load). Hence: while anything
    is queued, flush (which also wakes the flusher, writing the queue out in order); the
    PING of a flush sent with nothing queued follows everything, and its PONG proves it.
    """
    while True:
        queued = nc.pending_data_size
        await nc.flush(wait)
        if not queued:
            return


def _safe(netloc: str) -> str:
    """host:port without credentials (for logs)."""
    return netloc.rsplit("@", 1)[-1]
