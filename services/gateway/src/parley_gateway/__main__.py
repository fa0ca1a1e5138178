"""``python -m parley_gateway``: one gateway instance, configured by environment variables."""

from __future__ import annotations

import asyncio
import gc

from parley_gateway.server import Gateway
from parley_gateway.settings import Settings
from parley_gateway.workers import supervise
from parley_runtime.runner import load_settings, run

GC_GEN0 = 10_000  # the collector's first-generation threshold (see main)


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
    # Then the collections rarer: the first generation every GC_GEN0 net allocations, not
    # Python's 700. A resume leaves ~100 long-lived objects; during a reconnect storm (5,000
    # resumes per gateway) the full collections over all connections came again and again:
    # 1.2-1.7 s of a gateway's 4.4 s in a 10,000-client storm, ~0.7 s with this (measured
    # with gc.callbacks; docs/benchmarks.md "Reconnect storm"). A garbage cycle waits for at
    # most GC_GEN0 allocations more before it is freed.
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)

    async def serve(stop: asyncio.Event) -> None:
        await Gateway(settings).run(stop)

    run(settings, serve, drain_seconds=settings.drain_seconds)


if __name__ == "__main__":
    main()
