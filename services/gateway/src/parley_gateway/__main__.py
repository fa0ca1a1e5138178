"""``python -m parley_gateway``: one gateway instance, configured by environment variables."""

from __future__ import annotations

import asyncio

from parley_gateway.server import Gateway
from parley_gateway.settings import Settings
from parley_gateway.workers import supervise
from parley_runtime.runner import load_settings, run


def main() -> None:
    settings = load_settings(Settings)
    if settings.workers > 1 and settings.worker == 0:
        raise SystemExit(supervise(settings))  # N processes on the port (workers.py)

    async def serve(stop: asyncio.Event) -> None:
        await Gateway(settings).run(stop)

    run(settings, serve, drain_seconds=settings.drain_seconds)


if __name__ == "__main__":
    main()
