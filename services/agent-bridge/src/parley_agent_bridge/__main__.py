"""``python -m parley_agent_bridge``: configured only by environment variables."""

from __future__ import annotations

import asyncio

from parley_agent_bridge.app import create_app
from parley_agent_bridge.config import Settings
from parley_runtime.runner import load_settings, run, serve_asgi


def main() -> None:
    settings = load_settings(Settings)

    async def serve(stop: asyncio.Event) -> None:
        # The lifespan's shutdown stops the bridge (PARLEY_AGENT_BRIDGE_DRAIN_SECONDS).
        app = create_app(settings)
        await serve_asgi(
            app, host=settings.http_host, port=settings.http_port, stop=stop, settings=settings
        )

    run(settings, serve, drain_seconds=settings.drain_seconds)


if __name__ == "__main__":
    main()
