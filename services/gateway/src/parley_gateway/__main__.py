"""``python -m parley_gateway``: one gateway instance, configured by environment variables."""

from __future__ import annotations

import asyncio
import gc

from parley_gateway.server import Gateway
from parley_gateway.settings import Settings
from parley_gateway.workers import supervise
from parley_runtime.runner import load_settings, run


def main() -> None:
    settings = load_settings(Settings)
    if settings.workers > 1 and settings.worker == 0:
        raise SystemExit(supervise(settings))  # N processes on the port (workers.py)

    # What the imports built (~92k objects: websockets, NATS, pydantic schemas, the ASGI
    # app...) lives as long as the process: out of the collector's sight, so that a full
    # collection during a burst of connects scans the connections, not the startup heap too
    # (~40 ms each; a connect burst triggered one every few hundred connects).
    gc.collect()
    gc.freeze()

    async def serve(stop: asyncio.Event) -> None:
        await Gateway(settings).run(stop)

    run(settings, serve, drain_seconds=settings.drain_seconds)


if __name__ == "__main__":
    main()
