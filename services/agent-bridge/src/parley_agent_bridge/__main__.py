"""``python -m parley_agent_bridge``: configured only by environment variables."""

from __future__ import annotations

import logging

import uvicorn

from parley_agent_bridge.app import create_app
from parley_agent_bridge.config import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        lifespan="on",
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=25,
    )
    uvicorn.Server(config).run()  # SIGTERM → lifespan shutdown → bridge.stop()


if __name__ == "__main__":
    main()
