"""A real gateway in the test's own process and event loop (its objects can be inspected and
adjusted: the open timer, the sessions bucket, what a closed connection leaves behind), on a
real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from parley_devstack.servers import free_port
from parley_gateway.server import Gateway
from parley_gateway.settings import Settings


@contextlib.asynccontextmanager
async def running_gateway(nats_url: str, name: str) -> AsyncIterator[Gateway]:
    """A gateway (instance ``<name>-<port>``) running until the block ends, ready: its
    clients connect at ``ws://127.0.0.1:<settings.port>/ws``."""
    port = free_port()
    settings = Settings(
        environment="development",
        web_dist=None,
        nats_url=nats_url,
        port=port,
        instance_id=f"{name}-{port}",
        drain_seconds=0.1,
    )
    gw = Gateway(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    for _ in range(300):
        if gw.hub.ready:
            break
        await asyncio.sleep(0.05)
    assert gw.hub.ready
    try:
        yield gw
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
