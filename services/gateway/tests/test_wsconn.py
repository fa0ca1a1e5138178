"""wsconn.py: the lean WebSocket connection answers every client byte as websockets' own
server does (the same close code and reason, pongs, echoes), never crashes, and one client's
bad frames harm no one else.

Each case sends the same raw bytes after the handshake to an echo handler behind the front
(the lean connection) and behind websockets' ``serve()`` (its own connection), and compares
what comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode

from parley_gateway.front import Front, WsRoute
from parley_gateway.wsconn import LeanConnection, WebSocket
from parley_gateway.wsframes import SEND_LIMIT

MAX_SIZE = 1024
HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MASK = b"\x01\x02\x03\x04"


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """A client frame, written by hand (websockets' serializer refuses the bad ones)."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, bit | n))
    elif n < 0x10000:
        head = bytes((b0, bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, bit | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of the unmasked frames the server sent."""
    out = []
    pos = 0
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "a server frame must not be masked"
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            n = struct.unpack("!H", data[pos : pos + 2])[0]
            pos += 2
        elif n == 127:
            n = struct.unpack("!Q", data[pos : pos + 8])[0]
            pos += 8
        out.append((b0 & 0x0F, data[pos : pos + n]))
        pos += n
    return out


async def echo(ws: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            await ws.send(message)


@contextlib.asynccontextmanager
async def lean_server(serve_ws: Callable[[Any], Awaitable[None]] = echo) -> AsyncIterator[int]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not an HTTP request")

    opened: list[WebSocket] = []

    async def handler(ws: WebSocket) -> None:
        opened.append(ws)
        await serve_ws(ws)

    front = Front(
        app,
        {"/ws": WsRoute(handler, max_size=MAX_SIZE, close_timeout=1.0)},
        host="127.0.0.1",
        port=0,
    )
    server = await front.start()
    try:
        yield server.server.sockets[0].getsockname()[1]
    finally:
        assert all(isinstance(ws, LeanConnection) for ws in opened)
        front.close()
        await front.wait_closed(grace=2)


@contextlib.asynccontextmanager
async def websockets_server(
    serve_ws: Callable[[Any], Awaitable[None]] = echo,
) -> AsyncIterator[int]:
    async def handler(ws: ServerConnection) -> None:
        await serve_ws(ws)

    async with serve(
        handler, "127.0.0.1", 0, max_size=MAX_SIZE, compression=None, close_timeout=1.0
    ) as server:
        yield server.sockets[0].getsockname()[1]


async def talk(port: int, chunks: list[bytes], *, pause: float = 0.05) -> list[tuple[int, bytes]]:
    """The handshake, then each chunk (a short pause between them); the server's frames
    until it closes (or 2 s pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD)
    got = b""
    while b"\r\n\r\n" not in got:
        got += await asyncio.wait_for(reader.read(65536), 5)
    status, _, got = got.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 101 "), status
    with contextlib.suppress(ConnectionError):
        for chunk in chunks:
            writer.write(chunk)
            await asyncio.sleep(pause)
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(2):
            while chunk := await reader.read(65536):
                got += chunk
    writer.close()
    return server_frames(got)


def closing(frames: list[tuple[int, bytes]]) -> tuple[int, str] | None:
    """The close frame's code and reason, if the server sent one."""
    for opcode, payload in frames:
        if opcode == 8:
            close = Close.parse(payload)
            return close.code, close.reason
    return None


TEXT = frame(1, b"hello")
CASES: dict[str, list[bytes]] = {
    "text echo then close": [TEXT, frame(2, b"\x00\xff"), frame(8, close_payload(1000, b"bye"))],
    "fragments": [frame(1, b"he", fin=False), frame(0, b"l", fin=False), frame(0, b"lo")],
    "ping inside fragments": [frame(1, b"a", fin=False), frame(9, b"p"), frame(0, b"b")],
    "empty close": [frame(8, b"")],
    "close 4000": [frame(8, close_payload(4000, b"app"))],
    "unmasked": [frame(1, b"x", mask=False)],
    "reserved bit": [frame(1, b"x", rsv=0x40)],
    "opcode 3": [frame(3, b"x")],
    "opcode 11": [frame(11, b"x")],
    "ping too long": [frame(9, b"x" * 126)],
    "fragmented ping": [frame(9, b"x", fin=False)],
    "text too big": [frame(1, b"x" * (MAX_SIZE + 1))],
    "text too big, header only": [frame(1, b"x" * 70_000)[:14]],
    "fragments too big": [frame(1, b"x" * 1000, fin=False), frame(0, b"x" * 100)],
    "fragments too big after an empty one": [
        frame(1, b"", fin=False),
        frame(0, b"x" * (MAX_SIZE + 1)),
    ],
    "continuation first": [frame(0, b"x")],
    "text inside fragments": [frame(1, b"a", fin=False), frame(1, b"b")],
    "close inside fragments": [frame(1, b"a", fin=False), frame(8, close_payload(1000))],
    "bad utf-8": [frame(1, b"\xff\xfe")],
    "bad utf-8 over fragments": [frame(1, b"\xe2\x82", fin=False), frame(0, b"\x28")],
    "close of 1 byte": [frame(8, b"\x03")],
    "close code 999": [frame(8, close_payload(999))],
    "close code 1005": [frame(8, close_payload(1005))],
    "close code 1006": [frame(8, close_payload(1006))],
    "close code 5000": [frame(8, close_payload(5000))],
    "close reason not utf-8": [frame(8, close_payload(1000, b"\xff"))],
    "data after close": [frame(8, close_payload(1000)) + TEXT],
    "64-bit length": [frame(1, b"x" * 70_000)[:2] + b"\xff" * 8],
}


@pytest.mark.parametrize("name", list(CASES))
async def test_same_answers_as_websockets(name: str) -> None:
    async with websockets_server() as port:
        theirs = await talk(port, CASES[name])
    async with lean_server() as port:
        ours = await talk(port, CASES[name])
    assert closing(ours) == closing(theirs), name
    # the same data frames and pongs (in order), whatever their timing around the close
    assert [f for f in ours if f[0] != 8] == [f for f in theirs if f[0] != 8], name


async def test_a_frame_trickled_byte_by_byte() -> None:
    data = frame(1, b"y" * 300) + frame(9, b"ping!")
    async with lean_server() as port:
        got = await talk(port, [bytes((b,)) for b in data], pause=0.0005)
    assert got[:2] == [(1, b"y" * 300), (10, b"ping!")]


async def test_frames_in_one_write_and_pipelined_before_the_101() -> None:
    async with lean_server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD + frame(1, b"early") + frame(1, b"x", fin=False))
        got = await reader.readuntil(b"\r\n\r\n")
        writer.write(frame(0, b"y") + frame(2, b"z") + frame(9, b"p"))
        got = b""
        while len(server_frames(got)) < 4:
            got += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
    frames = server_frames(got)
    assert (10, b"p") in frames  # the pong: at once, before the echoes
    assert [f for f in frames if f[0] != 10] == [(1, b"early"), (1, b"xy"), (2, b"z")]


async def test_a_hostile_client_harms_no_one_else() -> None:
    async with lean_server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD)
        await reader.readuntil(b"\r\n\r\n")
        bad = [CASES[name] for name in ("unmasked", "bad utf-8", "text too big", "opcode 3")]
        answers = await asyncio.gather(*(talk(port, chunks) for chunks in bad))
        assert [closing(a) for a in answers] == [
            (1002, "incorrect masking"),
            (1007, "invalid start byte at position 0"),
            (1009, f"frame with {MAX_SIZE + 1} bytes exceeds limit of {MAX_SIZE} bytes"),
            (1002, "invalid opcode"),
        ]
        writer.write(frame(1, b"still here"))
        got = b""
        while len(server_frames(got)) < 1:
            got += await asyncio.wait_for(reader.read(65536), 5)
        assert server_frames(got) == [(1, b"still here")]
        writer.close()


async def test_server_close_waits_for_the_client_then_aborts() -> None:
    """``close()``: the close frame, then the TCP connection ends when the client answers,
    or after close_timeout when it does not."""
    closed: list[float] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError

    async def handler(ws: WebSocket) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await ws.close(4001, "bye")
        closed.append(loop.time() - start)

    front = Front(app, {"/ws": WsRoute(handler, close_timeout=0.5)}, host="127.0.0.1", port=0)
    server = await front.start()
    port = server.server.sockets[0].getsockname()[1]
    try:
        for answer in (True, False):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEAD)
            got = await reader.readuntil(b"\r\n\r\n")
            while not server_frames(got.partition(b"\r\n\r\n")[2]):
                got += await asyncio.wait_for(reader.read(65536), 5)
            assert server_frames(got.partition(b"\r\n\r\n")[2]) == [
                (8, close_payload(4001, b"bye"))
            ]
            if answer:
                writer.write(frame(8, close_payload(4001, b"bye")))
            assert await asyncio.wait_for(reader.read(65536), 5) == b""  # the server closed
            writer.close()
            await asyncio.sleep(0.6)
        assert closed[0] < 0.4 and closed[1] >= 0.45
    finally:
        front.close()
        await front.wait_closed(grace=2)


def test_close_frames_of_websockets_serializer_parse() -> None:
    # The test's own frame writer agrees with websockets' for a valid frame.
    ours = frame(1, b"abc")
    theirs = Frame(Opcode.TEXT, b"abc").serialize(mask=True, extensions=[])
    assert ours[:2] == theirs[:2] and len(ours) == len(theirs)


class _FullTransport:
    """A transport whose write buffer holds ``buffered`` bytes the client has not read."""

    def __init__(self, buffered: int) -> None:
        self.buffered = buffered
        self.written: list[bytes] = []
        self.eof = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.mark.parametrize("buffered", [0, SEND_LIMIT + 1])
async def test_pings_of_a_client_that_reads_nothing_close_1013(buffered: int) -> None:
    """A pong is queued while the client reads; a client that pings and never reads would
    grow the write buffer without bound: past its send_limit it is closed as too slow."""
    transport = _FullTransport(buffered)
    conn = LeanConnection(
        cast(asyncio.Transport, transport), max_size=MAX_SIZE, max_queue=16, close_timeout=1.0
    )
    conn.accept(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    conn.data_received(frame(9, b"ping?"))
    frames = server_frames(b"".join(transport.written).partition(b"\r\n\r\n")[2])
    if buffered == 0:
        assert frames == [(10, b"ping?")] and not transport.eof
    else:
        assert closing(frames) == (1013, "too slow: send queue full") and transport.eof
        assert (10, b"ping?") not in frames
