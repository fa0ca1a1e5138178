"""``python -m parley_conversation``: one replica, configured by environment variables."""

from __future__ import annotations

import logging
import signal
from types import FrameType

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
    # uvicorn re-raises a captured signal after its graceful shutdown, which would end the
    # process "killed by SIGTERM"; with these handlers in place the drained process exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _after_shutdown)
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


def _after_shutdown(signum: int, _frame: FrameType | None) -> None:
    logging.getLogger(__name__).info("shut down after signal %d", signum)


if __name__ == "__main__":
    main()
