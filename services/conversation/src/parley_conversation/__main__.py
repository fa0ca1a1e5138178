"""``python -m parley_conversation``: one replica, configured by environment variables."""

from __future__ import annotations

import logging

import uvicorn

from parley_conversation.app import create_app
from parley_conversation.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    # uvicorn turns SIGTERM/SIGINT into the lifespan's shutdown, which drains the batches.
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_seconds) + 5,
    )


if __name__ == "__main__":
    main()
