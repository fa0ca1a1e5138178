"""A new principal's SUB (sent with the publish window's batch, not acknowledged) is at
NATS before anything the client's first command causes: what is published for the
principal right after ``connected`` reaches the connection, here the ``conversation:created``
its creator gets on its principal's events (a SUB held back, as the 5 ms connect window of
34e7863 did before f9bcb49, loses it).

A real gateway in this process on the session's nats-server with a real conversation
service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack
from parley_gateway.server import Gateway

from .conftest import Client, token, uid
from .inprocess import running_gateway


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    """The conversation service alone: the gateway runs in this process."""
    with module_stack(nats_server, store_server, servers_dir, "window", gateway_ports=[]) as s:
        yield s


@pytest.fixture
async def gateway(stack: Stack, nats_server: NatsServer) -> AsyncIterator[Gateway]:
    async with running_gateway(nats_server.url, "window") as gw:
        yield gw


async def test_a_command_right_after_the_hello_gets_the_events_it_causes(
    gateway: Gateway,
) -> None:
    url = f"ws://127.0.0.1:{gateway.settings.port}/ws?access_token={token(uid('window'))}"
    client = Client(await connect(url)).start()
    try:
        await client.wait_for(lambda f: f.get("event") == "connected")
        r = await client.cmd("conversation:create", {"participants": []})
        assert r["success"], r
        cid = r["data"]["_id"]
        created = await client.wait_for(
            lambda f: (
                f.get("event") == "conversation:created"
                and f.get("conversationId", (f.get("data") or {}).get("_id")) == cid
            ),
            timeout=10.0,
        )
        assert created["success"]
    finally:
        await client.close()
