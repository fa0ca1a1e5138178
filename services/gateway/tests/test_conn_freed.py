"""A closed connection's objects are freed at once by reference counting, not left to the
cyclic garbage collector (whose full collections pause the gateway under load).

A real gateway in this process, on the session's nats-server with a real conversation
service; the cyclic GC is off while a client connects, joins a conversation, sends a message
and closes. The principal's state and its events subscription, the conversation's state and
its subscription (its last member left), the connection and its WebSocket (and on
``/socket.io/``, its Engine.IO session) must all be gone when the gateway has let them go.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from parley_contract import jsonutil
from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack
from parley_gateway.conn import Conn
from parley_gateway.fanout import ConvState
from parley_gateway.natsdirect import _DirectQueue
from parley_gateway.presence import PrincipalState
from parley_gateway.server import Gateway
from parley_gateway.sio.session import EioSession, SioConn
from parley_gateway.wsconn import BoundedServerConnection, LeanConnection

from .conftest import Client, joined_conversation, token, uid
from .inprocess import running_gateway

# What one connection (and a conversation it alone follows here) holds on the gateway.
HELD = (
    Conn,
    SioConn,
    EioSession,
    LeanConnection,
    BoundedServerConnection,
    ServerProtocol,
    PrincipalState,
    ConvState,
    _DirectQueue,
)


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    """The conversation service alone: the gateway runs in this process."""
    with module_stack(nats_server, store_server, servers_dir, "freed", gateway_ports=[]) as s:
        yield s


@pytest.fixture
async def gateway(stack: Stack, nats_server: NatsServer) -> AsyncIterator[Gateway]:
    async with running_gateway(nats_server.url, "freed") as gw:
        yield gw


def held() -> dict[str, int]:
    """How many objects of each ``HELD`` type exist (garbage in cycles included)."""
    counts = dict.fromkeys((t.__name__ for t in HELD), 0)
    for obj in gc.get_objects():
        if isinstance(obj, HELD):
            counts[type(obj).__name__] += 1
    return counts


@pytest.mark.parametrize("path", ["lean", "websockets"])
async def test_a_closed_connection_is_freed_without_the_cyclic_gc(
    gateway: Gateway, path: str
) -> None:
    url = f"ws://127.0.0.1:{gateway.settings.port}/ws?access_token={token(uid('freed'))}"
    # A subprotocol offered: not the plain upgrade, websockets' connection takes it.
    offer = [Subprotocol("parley")] if path == "websockets" else None
    gc.collect()  # anything earlier tests left
    baseline = held()
    gc.disable()
    try:
        client = Client(await connect(url, subprotocols=offer)).start()
        await client.wait_for(lambda f: f.get("event") == "connected")
        cid = await joined_conversation(client)
        r = await client.cmd("message:send", {"conversationId": cid, "content": "hi"})
        assert r["success"], r
        await client.wait_for(lambda f: f.get("event") == "message:new")
        during = held()
        opened = "LeanConnection" if path == "lean" else "ServerProtocol"
        assert during[opened] == baseline[opened] + 1
        assert during["PrincipalState"] == baseline["PrincipalState"] + 1
        assert during["ConvState"] == baseline["ConvState"] + 1
        await client.close()
        await freed(gateway, baseline)
    finally:
        gc.enable()


async def test_a_closed_socketio_connection_is_freed_without_the_cyclic_gc(
    gateway: Gateway,
) -> None:
    url = f"ws://127.0.0.1:{gateway.settings.port}/socket.io/?EIO=4&transport=websocket"
    gc.collect()
    baseline = held()
    gc.disable()
    try:
        async with connect(url) as ws:
            assert str(await ws.recv()).startswith("0")  # Engine.IO open
            await ws.send("40" + jsonutil.dumps({"token": token(uid("freed"))}).decode())
            assert str(await ws.recv()).startswith("40")  # Socket.IO connect
            assert str(await ws.recv()).startswith('42["connected"')
            during = held()
            assert during["EioSession"] == baseline["EioSession"] + 1
            assert during["SioConn"] == baseline["SioConn"] + 1
            assert during["PrincipalState"] == baseline["PrincipalState"] + 1
        await freed(gateway, baseline)
    finally:
        gc.enable()


async def freed(gateway: Gateway, baseline: dict[str, int]) -> None:
    """The gateway's cleanup after a close is over, and what the connection held is gone.

    Polled, not slept on (the handler's last steps, the transport's end may lag under load):
    with the cyclic GC off, objects left in a cycle never go, and this fails after 10 s."""
    hub = gateway.hub

    def done() -> bool:
        idle = not (hub.sessions or hub.principals or hub.convs or gateway.sio.sessions)
        return idle and held() == baseline

    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0.05)
    assert not (hub.sessions or hub.principals or hub.convs or gateway.sio.sessions)
    assert held() == baseline
