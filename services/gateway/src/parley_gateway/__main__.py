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
    # Then the collections rarer: the first generation every PARLEY_GATEWAY_GC_GEN0 (10,000)
    # net allocations, not Python's 700. A connect or a resume leaves ~100 long-lived objects;
    # at 700 a burst of them is scanned again and again by full collections: in a
    # 10,000-client reconnect storm 0.86-1.05 s of collector CPU in each surviving gateway's
    # ~3.6 s (5-6 full collections), 0.37-0.54 s at 10,000 (none). Steady fan-out collects
    # less than once a second either way (<= 1.3 ms per second). Measured with gc.callbacks:
    # docs/benchmarks.md "The gateway's collector".
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(settings.gc_gen0, gen1, gen2)

    async def serve(stop: asyncio.Event) -> None:
        await Gateway(settings).run(stop)

    run(settings, serve, drain_seconds=settings.drain_seconds)


if __name__ == "__main__":
    main()
