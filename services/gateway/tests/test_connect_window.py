"""A connect's presence and session puts wait for the connect window
(``bus.CONNECT_WINDOW_SECONDS``); its principal's SUB does not: what is published for the
principal right after ``connected`` reaches the connection, here the ``conversation:created``
its creator gets on its principal's events.

A real gateway in this process (its window made long: a SUB that waited with the puts would
reach NATS after the event was published, and the event would be lost) on the session's
nats-server with a real conversation service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack
from parley_gateway import bus
from parley_gateway.server import Gateway

from .conftest import Client, token, uid
from .inprocess import running_gateway


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    """The conversation service alone: the gateway runs in this process."""
    with module_stack(nats_server, store_server, servers_dir, "window", gateway_ports=[]) as s:
        yield s


@pytest.fixture
async def gateway(
    stack: Stack, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    monkeypatch.setattr(bus, "CONNECT_WINDOW_SECONDS", 30.0)
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
