"""``python -m parley_conversation``: one replica, configured by environment variables."""

from __future__ import annotations

import asyncio

from parley_conversation.app import create_app
from parley_conversation.settings import Settings
from parley_runtime.runner import load_settings, run, serve_asgi


def main() -> None:
    settings = load_settings(Settings)

    async def serve(stop: asyncio.Event) -> None:
        # The lifespan's shutdown drains the batches (PARLEY_CONVERSATION_DRAIN_SECONDS).
        app = create_app(settings)
        await serve_asgi(
            app, host=settings.http_host, port=settings.http_port, stop=stop, settings=settings
        )

    run(settings, serve, drain_seconds=settings.drain_seconds)


if __name__ == "__main__":
    main()
