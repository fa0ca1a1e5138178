"""Logging of a service process: one format (with the instance id), one level setting."""

from __future__ import annotations

import logging

from parley_runtime.settings import ServiceSettings

# Libraries that log every connection or request at INFO.
_CHATTY = ("websockets", "uvicorn.access")


def setup_logging(settings: ServiceSettings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s [{settings.instance_id}] %(message)s",
        force=True,
    )
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
