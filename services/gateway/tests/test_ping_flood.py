"""A client that sends pings and never reads the pongs is failed once its unread bytes pass
the route's ``send_limit`` (1013), on the lean connection and on websockets' own (another
upgrade): before, the pongs piled up in the gateway's memory for as long as it sent (200 MB
of pings, 200 MB more resident), and the others on the gateway carry on."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from parley_gateway.front import Front, WsRoute
from parley_gateway.wsconn import BoundedServerConnection, LeanConnection, WebSocket

SEND_LIMIT = 64 * 1024
PING = b"\x89\xfd\x01\x02\x03\x04" + bytes(
    b ^ (1, 2, 3, 4)[i % 4] for i, b in enumerate(b"x" * 125)
)
HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: %s\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@contextlib.asynccontextmanager
async def echo_server(opened: list[Any]) -> AsyncIterator[int]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not an HTTP request")

    async def handler(ws: WebSocket) -> None:
        opened.append(ws)
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    route = WsRoute(handler, close_timeout=0.1, send_limit=SEND_LIMIT)
    front = Front(app, {"/ws": route}, host="127.0.0.1", port=0)
    server = await front.start()
    try:
        yield server.server.sockets[0].getsockname()[1]
    finally:
        front.close()
        await front.wait_closed(grace=2)


async def flood(port: int, connection: bytes) -> int:
    """Pings, never a read: the bytes sent until the gateway ends the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(HEAD % connection)
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(reader.read(1), 5)  # the 101 only: pongs stay unread
    assert head.startswith(b"HTTP/1.1 101 "), head
    sent = 0
    burst = PING * 500
    try:
        while sent < 300_000_000:
            writer.write(burst)
            await asyncio.wait_for(writer.drain(), 5)
            sent += len(burst)
            if writer.transport.is_closing():  # reset by the gateway (drain does not raise)
                return sent
    except (ConnectionError, TimeoutError):
        return sent
    finally:
        writer.transport.abort()
    raise AssertionError(f"{sent} bytes of pings and the connection still open")


@pytest.mark.parametrize(
    ("connection", "kind"),
    [(b"Upgrade", LeanConnection), (b"keep-alive, Upgrade", BoundedServerConnection)],
)
async def test_unread_pongs_fail_the_client_not_the_gateway(
    connection: bytes, kind: type[LeanConnection | BoundedServerConnection]
) -> None:
    opened: list[Any] = []
    async with echo_server(opened) as port:
        sent = await flood(port, connection)
        ws = opened[0]
        assert isinstance(ws, kind)
        # Ended, its input discarded from the 1013 on (the bytes sent until then are what
        # the loopback's socket buffers take), instead of 300 MB of pongs in memory.
        assert sent < 300_000_000
        close = ws.protocol.close_sent  # the same attribute on both
        assert close is not None and close.code == 1013
        # Everyone else is served as before.
        async with connect(f"ws://127.0.0.1:{port}/ws") as other:
            await other.send("still here")
            assert await asyncio.wait_for(other.recv(), 5) == "still here"
