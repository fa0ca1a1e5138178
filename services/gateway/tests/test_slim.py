"""slim.py: what is dropped from a websockets connection after the handshake, and that the
connection still behaves (frames in both directions, fragments, pings, close).

A real websockets server and client over loopback; the websockets internals slim.py relies on
are asserted here, so an upgrade that changes them fails these tests instead of silently
keeping the memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from parley_gateway import slim


def _handshake(protocol: ServerProtocol) -> None:
    protocol.receive_data(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Bearer " + b"x" * 300 + b"\r\n\r\n"
    )
    (request,) = protocol.events_received()
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))
    assert protocol.state is State.OPEN


def _masked_text(payload: bytes) -> bytes:
    return Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])


def test_parser_restarted_between_frames_keeps_parsing() -> None:
    protocol = ServerProtocol()
    _handshake(protocol)
    old = protocol.parser
    assert slim._between_frames(old)
    assert slim.restart_parser(protocol)
    assert protocol.parser is not old
    assert protocol.parser.gi_code is Protocol.parse.__code__  # type: ignore[attr-defined]
    data = _masked_text(b'{"event":"a"}') + _masked_text(b"x" * 70_000)
    protocol.receive_data(data[:3])  # a frame split over reads
    protocol.receive_data(data[3:])
    frames = protocol.events_received()
    assert [bytes(f.data) for f in frames] == [b'{"event":"a"}', b"x" * 70_000]  # type: ignore[union-attr]
    assert not slim.restart_parser(protocol)  # already a bare frame loop


def test_parser_left_alone_in_the_middle_of_a_frame() -> None:
    protocol = ServerProtocol()
    _handshake(protocol)
    frame = _masked_text(b"hello")
    protocol.receive_data(frame[:2])  # header consumed, the rest not there yet
    old = protocol.parser
    assert not slim._between_frames(old)
    assert not slim.restart_parser(protocol)
    assert protocol.parser is old
    protocol.receive_data(frame[2:])
    (got,) = protocol.events_received()
    assert bytes(got.data) == b"hello"  # type: ignore[union-attr]


def test_parser_left_alone_before_the_handshake() -> None:
    protocol = ServerProtocol()
    assert protocol.state is State.CONNECTING
    assert not slim.restart_parser(protocol)


async def test_slimmed_connection_still_works() -> None:
    seen: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None and "authorization" in request.headers
        old_parser = ws.protocol.parser
        slim.slim_after_handshake(ws)
        seen["request"] = ws.request
        seen["parser_replaced"] = ws.protocol.parser is not old_parser
        seen["logger"] = ws.logger
        seen["request_rcvd"] = ws.request_rcvd
        seen["frames"] = ws.recv_messages.frames.queue
        seen["drain_waiters"] = ws.drain_waiters
        async for message in ws:
            await ws.send(message)  # echo
        seen["closed"] = True

    async with serve(
        handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_queue=16
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}/ws",
            additional_headers={"Authorization": "Bearer " + "t" * 400},
            compression=None,
        ) as client:
            await client.send("one")
            assert await client.recv() == "one"
            await client.send(["frag", "mented"])  # a fragmented message
            assert await client.recv() == "fragmented"
            big = "y" * 200_000
            await client.send(big)
            assert await client.recv() == big
            latency = await asyncio.wait_for(await client.ping(), 5)  # pong from the server
            assert latency >= 0
            # A burst: far more frames than the server's queue (max_queue 16) before it reads.
            burst = [f"m{i}" for i in range(2000)]
            for m in burst:
                await client.send(m)
            assert [await client.recv() for _ in burst] == burst
        for _ in range(100):
            if seen.get("closed"):
                break
            await asyncio.sleep(0.01)
    assert seen["closed"]
    assert seen["request"] is slim.SLIM_REQUEST
    assert seen["parser_replaced"]
    assert isinstance(seen["logger"], logging.Logger)
    assert seen["request_rcvd"] is slim.done_future() and slim.done_future().done()
    assert isinstance(seen["frames"], slim.LazyDeque) and not seen["frames"]
    assert seen["drain_waiters"] == []


async def test_server_close_after_slimming() -> None:
    async def handler(ws: ServerConnection) -> None:
        slim.slim_after_handshake(ws)
        await ws.recv()
        await ws.close(4001, "bye")

    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as client:
            await client.send("x")
            with pytest.raises(ConnectionClosed):
                await client.recv()
            assert client.close_code == 4001


def test_lazy_deque_behaves_like_a_deque() -> None:
    lazy = slim.LazyDeque()
    ref: deque[int] = deque()
    assert not lazy and len(lazy) == 0
    with pytest.raises(IndexError):
        lazy.popleft()
    for op in range(200):
        if op % 3 == 2 and ref:
            assert lazy.popleft() == ref.popleft()
        elif op % 7 == 0:
            items = [op, op + 1000]
            lazy.extendleft(reversed(items))  # websockets' put_back
            ref.extendleft(reversed(items))
        else:
            lazy.append(op)
            ref.append(op)
        assert len(lazy) == len(ref) and bool(lazy) == bool(ref)
    while ref:
        assert lazy.popleft() == ref.popleft()
    assert not lazy and lazy._items is None  # the deque is released once empty
    assert list(slim.LazyDeque([1, 2]).__class__.__slots__) == ["_items"]
