"""Differential fuzzing of the lean WebSocket connection (wsconn.py, wsframes.py) against
websockets' own ``serve()``: Hypothesis writes random client byte streams, the same bytes
go to an echo handler behind the front and behind websockets, and both must answer alike.

The streams (wsstreams.py) are the handshake head then frames of every kind, valid or
not, cut into TCP writes at random offsets.

Both servers must give the same observable result: the 101, every frame sent back (echoes,
pongs, the close frame with its code and reason), the end of the connection within a
bounded time (no hang), and what the handler saw (the messages, then the end of the
iteration or the ``ConnectionClosedOK``/``Error`` with its close frames). No error may be
logged, and a client connected to the lean server all along still gets its echoes.

To make the comparison timing-free, the client waits after each write until the answers
the frames it completed ask for have come (or a close frame, or the end), so that both
servers see the same reads: whether a message's echo is still sent depends on whether a
close or a failure came in the same read. If the stream did not end the connection, it
ends with a close frame (1000), a half-close, or a frame cut short and a half-close.

``make test`` runs a few dozen examples, derandomized (no database: it cannot flake). Run
it longer locally, e.g. ``PARLEY_WS_FUZZ_EXAMPLES=5000 PARLEY_WS_FUZZ_SEED=random uv run
--frozen pytest services/gateway/tests/test_wsconn_fuzz.py -x -q -p no:timeout``
(``random``: a new random seed each run, printed on a failure with the falsifying stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from .test_wsconn import HEAD, close_payload, lean_server, websockets_server
from .wsstreams import DATA, PING, Wire, encode, streams

T = TypeVar("T")
logger = logging.getLogger(__name__)

EXAMPLES = int(os.environ.get("PARLEY_WS_FUZZ_EXAMPLES", "50"))
RANDOM = os.environ.get("PARLEY_WS_FUZZ_SEED", "") == "random"
STEP_WAIT = 3.0  # seconds for the answers a write asks for (they come in milliseconds)
END_WAIT = 4.0  # seconds for the end of the connection (close_timeout is 1 s)

# ---------------------------------------------------------------------------- the client


class Reader:
    """The server's answer: the status line, then its frames (unmasked) as they complete."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = b""
        self.status: bytes | None = None
        self.frames: list[tuple[int, bytes]] = []
        self.early: list[tuple[int, bytes]] = []  # frames written before the 101
        self.ended = False

    def answers(self) -> int:
        return (self.status is not None) + sum(op != 8 for op, _ in self.early + self.frames)

    def closed(self) -> bool:
        return self.ended or any(op == 8 for op, _ in self.early + self.frames)

    async def read(self) -> None:
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        if not data:
            self.ended = True
            return
        self.buf += data
        if self.status is None:
            if b"\r\n\r\n" not in self.buf:
                return
            early, http, self.buf = self.buf.partition(b"HTTP/1.1 ")
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.status = (http + head).split(b"\r\n")[0]
            self.early = self.parse(early)
        self.frames += self.parse(None)

    def parse(self, data: bytes | None) -> list[tuple[int, bytes]]:
        """The complete frames in ``data`` (None: at the start of the buffer, which keeps
        the rest)."""
        buf = self.buf if data is None else data
        frames = []
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            assert b0 & 0xF0 == 0x80 and not b1 & 0x80, "a server frame: fin, no rsv, unmasked"
            n, pos = b1 & 0x7F, 2
            if n == 126:
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + n:
                break
            frames.append((b0 & 0x0F, buf[pos : pos + n]))
            buf = buf[pos + n :]
        if data is None:
            self.buf = buf
        else:
            assert not buf, "a partial frame before the 101"
        return frames

    async def until(self, seconds: float, answers: int | None = None) -> bool:
        """Read until ``answers`` answers or a close frame (None: the end) have come."""

        def done() -> bool:
            if answers is None:
                return self.ended
            return self.answers() >= answers or self.closed()

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not done() and not self.ended:
                    await self.read()
        return done()


async def run(port: int, wire: Wire, cuts: list[int]) -> dict[str, Any]:
    """The stream in writes cut at ``cuts``; after each, the answers its frames ask for."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    local_port = writer.get_extra_info("sockname")[1]
    got = Reader(reader)
    stalls: list[int] = []
    expected = 0
    ends = iter(wire.ends)
    end = next(ends, None)
    try:
        for step, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(wire.data)], strict=True)):
            writer.write(bytes(wire.data[a:b]))
            if a < len(HEAD) <= b:
                expected += 1  # the 101
            while end is not None and end[0] <= b:
                expected += end[1] in (DATA, PING)
                end = next(ends, None)
            if not await got.until(STEP_WAIT, expected):
                stalls.append(step)
            if got.closed():
                break
            await asyncio.sleep(0.001)  # most writes arrive in reads of their own
        if got.closed():
            pass
        elif wire.eof:
            writer.write_eof()
        else:
            writer.write(b"\x88\x82" + b"\x00" * 4 + close_payload(1000))
        ended = await got.until(END_WAIT)
    finally:
        writer.close()
    try:  # the handler ends once the connection is closed
        seen = await asyncio.wait_for(handled(local_port), END_WAIT)
    finally:
        HANDLED.pop(local_port, None)
    return {
        "handler": seen,
        "status": got.status,
        "frames": got.frames,
        "early": got.early,
        "ended": ended,
        "stalls": stalls,
    }


# ---------------------------------------------------------------------------- the test


@dataclass
class Bystander:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, port: int) -> Bystander:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return cls(reader, writer)

    async def still_echoes(self) -> None:
        self.writer.write(encode(1, b"still here", mask=b"abcd"))
        assert await asyncio.wait_for(self.reader.readexactly(12), 5) == b"\x81\x0astill here"
        self.writer.close()


class Loop:
    """An event loop in a thread of its own, for the (synchronous) Hypothesis test body."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# What each server's handler saw, by the client's port.
HANDLED: dict[int, asyncio.Future[list[object]]] = {}


def handled(port: int) -> asyncio.Future[list[object]]:
    if port not in HANDLED:
        HANDLED[port] = asyncio.get_running_loop().create_future()
    return HANDLED[port]


def code_reason(close: Close | None) -> tuple[int, str] | None:
    return None if close is None else (close.code, close.reason)


async def recording_echo(ws: Any) -> None:
    """The echo handler, which records what it got: the messages, then how the connection
    ended as it saw it (the exception, the close frames received and sent)."""
    seen: list[object] = []
    try:
        async for message in ws:
            seen.append(message)
            await ws.send(message)
        seen.append("end of the messages")
    except ConnectionClosed as exc:
        ended = (code_reason(exc.rcvd), code_reason(exc.sent), exc.rcvd_then_sent)
        seen.append((type(exc).__name__, *ended))
    finally:
        handled(ws.transport.get_extra_info("peername")[1]).set_result(seen)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Loop, int, int]]:
    loop = Loop()
    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[int, int]:
        return (
            await stack.enter_async_context(lean_server(recording_echo)),
            await stack.enter_async_context(websockets_server(recording_echo)),
        )

    lean, theirs = loop.run(start())
    try:
        yield loop, lean, theirs
    finally:
        loop.run(stack.aclose())
        loop.stop()


def test_random_streams_get_the_same_answers_as_websockets(
    servers: tuple[Loop, int, int], caplog: pytest.LogCaptureFixture
) -> None:
    loop, lean_port, their_port = servers
    outcomes: Counter[int | str | None] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(stream=streams())
    def compare(stream: tuple[Wire, list[int]]) -> None:
        wire, cuts = stream

        # Frames in the handshake's read: the lean connection keeps them and parses them
        # once the 101 is written, as if they came just after it. websockets parses them
        # before its 101 (still CONNECTING): it writes a ping's pong before the 101, and
        # fails a bad frame with no 101 and no close frame. Its answers to those bytes
        # sent after the 101 are the reference.
        their_cuts = sorted({*cuts, len(HEAD)})
        # Two checks are made at other times, with the same close code and reason:
        # - a text message of invalid UTF-8: the lean connection fails as its last frame
        #   comes (RFC 6455 7.1.7: nothing after it is processed); websockets' asyncio
        #   connection checks UTF-8 when the handler reads the message, so it goes on with
        #   the frames after it in the same read (pongs, a close echoed), and the handler
        #   echoes the messages before it first;
        # - reserved bits, a control frame too long or fragmented: the lean connection
        #   fails on the header; websockets reads the whole payload first (in the meantime
        #   the handler echoes the messages before it).
        # Compared with that frame in writes of its own (and, for websockets, whole).
        early = wire.early_failure()
        if early is not None:
            start, end, on_header = early
            cuts = sorted({*cuts, start, end} - {len(wire.data)})
            their_cuts = sorted({*their_cuts, start, end} - {len(wire.data)})
            if on_header:
                their_cuts = [c for c in their_cuts if not start < c < end]

        async def both() -> tuple[dict[str, Any], dict[str, Any]]:
            return await asyncio.gather(
                run(lean_port, wire, cuts), run(their_port, wire, their_cuts)
            )

        ours, theirs = loop.run(both())
        assert theirs["ended"], theirs  # the reference ends every stream
        assert not ours["early"] and not theirs["early"]  # no frame before the 101
        assert ours == theirs
        assert not theirs["stalls"], "the answers a write asks for are not those expected"
        closes = [payload for op, payload in theirs["frames"] if op == 8]
        outcomes[int.from_bytes(closes[0][:2], "big") if closes else None] += 1
        outcomes[closes[0][2:].decode()[:20] if closes else ""] += 1
        outcomes["answers"] += len(theirs["frames"]) - len(closes)
        outcomes["special"] += early is not None

    bystander = loop.run(Bystander.open(lean_port))
    compare()
    logger.info("close codes, answers, examples with a cut moved: %s", outcomes)
    assert outcomes[1000] and outcomes[1002] and outcomes["answers"], outcomes
    # A client connected all along to the lean server still gets its echoes.
    loop.run(bystander.still_echoes())
    # No exception in a protocol callback or a handler (asyncio and websockets log them).
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors[:3]]
