"""Differential fuzzing of the lean WebSocket connection (wsconn.py, wsframes.py) against
websockets' own ``serve()``: Hypothesis writes random client byte streams, the same bytes
go to an echo handler behind the front and behind websockets, and both must answer alike.

A stream is the handshake head then frames: data messages (text, valid or not, UTF-8 split
anywhere across fragments; binary), fragmented or not, with pings and pongs between the
fragments; pings, pongs, closes (valid and invalid codes, UTF-8 and non-UTF-8 reasons,
1-byte payloads); and raw frames with any opcode (reserved ones too), reserved bits,
unmasked, 7/16/64-bit lengths (non-minimal encodings too), control frames too long or
fragmented, and headers declaring more than ``max_size`` (up to 2**64 - 1) with no payload.
The bytes are then cut into chunks at random offsets (inside the head, inside a frame's
header or payload, frames before the 101), each chunk one TCP write.

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
import struct
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from .test_wsconn import HEAD, MAX_SIZE, close_payload, lean_server, websockets_server

T = TypeVar("T")
logger = logging.getLogger(__name__)

EXAMPLES = int(os.environ.get("PARLEY_WS_FUZZ_EXAMPLES", "50"))
RANDOM = os.environ.get("PARLEY_WS_FUZZ_SEED", "") == "random"
STEP_WAIT = 3.0  # seconds for the answers a write asks for (they come in milliseconds)
END_WAIT = 4.0  # seconds for the end of the connection (close_timeout is 1 s)
DATA, PING, CLOSE, OTHER = "data", "ping", "close", "other"


@dataclass
class Wire:
    """A client stream: its bytes, and where each frame ends with what it asks for."""

    data: bytearray = field(default_factory=lambda: bytearray(HEAD))
    ends: list[tuple[int, str]] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    eof: bool = False  # ends with a half-close (else a close frame, unless closed before)
    truncated: bool = False  # its last frame cut short (then it ends with a half-close)

    def add(self, raw: bytes, kind: str) -> None:
        self.data += raw
        self.ends.append((len(self.data), kind))
        self.raws.append(raw)

    def early_failure(self) -> tuple[int, int, bool] | None:
        """The first frame the two connections fail on at different times, by a simple
        model of a connection: its start, its end, and whether the lean one fails on its
        header (True) or on its last byte (False, a text message of invalid UTF-8); None
        if the stream ends, or fails first on a frame they fail on alike."""
        frag_op, parts = -1, b""
        whole = len(self.raws) - self.truncated
        for raw, (end, _) in zip(self.raws[:whole], self.ends, strict=False):
            b0, b1 = raw[0], raw[1]
            opcode, fin, n, pos = b0 & 0x0F, b0 & 0x80, b1 & 0x7F, 2
            if n == 126:
                n, pos = int.from_bytes(raw[2:4], "big"), 4
            elif n == 127:
                n, pos = int.from_bytes(raw[2:10], "big"), 10
            current = len(parts) if frag_op >= 0 else 0
            if opcode not in (0, 1, 2, 8, 9, 10) or not b1 & 0x80 or n > MAX_SIZE - current:
                return None  # failed alike on the header
            if b0 & 0x70 or (opcode >= 8 and (n > 125 or not fin)):
                return end - len(raw), end, True
            if opcode == 8 or ((opcode == 0) != (frag_op >= 0) and opcode < 8):
                return None  # closed or failed alike on the whole frame
            if opcode >= 8:
                continue
            mask = raw[pos : pos + 4]
            parts += bytes(b ^ mask[i % 4] for i, b in enumerate(raw[pos + 4 :]))
            frag_op = frag_op if opcode == 0 else opcode
            if not fin:
                continue
            with contextlib.suppress(UnicodeDecodeError):
                if frag_op == 1:
                    parts.decode()
                frag_op, parts = -1, b""
                continue
            return end - len(raw), end, False
        return None


def encode(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x00\x00\x00\x00",
    width: int = 0,
    declared: int | None = None,
) -> bytes:
    """A client frame: ``width`` 0 for the minimal length encoding, else 7, 16 or 64 bits;
    ``declared`` a length other than the payload's (its header only is sent then)."""
    n = len(payload) if declared is None else declared
    if not width:
        width = 7 if n < 126 else 16 if n < 0x10000 else 64
    b0 = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask is not None else 0
    if width == 7:
        head = bytes((b0, bit | n))
    elif width == 16:
        head = bytes((b0, bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, bit | 127)) + struct.pack("!Q", n)
    if mask is not None:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head if declared is not None else head + payload


# ---------------------------------------------------------------------------- strategies

masks = st.binary(min_size=4, max_size=4)
small = st.binary(max_size=20)
sizes = st.one_of(
    st.integers(0, 20), st.integers(120, 130), st.integers(MAX_SIZE - 8, MAX_SIZE + 4)
)
texts = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=12).map(str.encode)
bad_utf8 = st.sampled_from(
    [b"\xff", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xf0"]
)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["text", "text", "bad", "sized"]))
    if kind == "text":
        return draw(texts)
    if kind == "bad":
        return draw(texts) + draw(bad_utf8) + draw(texts)
    return draw(st.sampled_from([b"a", b"\xe2\x82\xac"])) * (draw(sizes) // 3 or 1)


CODES = [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1011, 1012, 1014, 1015, 1016]
CODES += [0, 999, 2999, 3000, 4999, 5000, 65535]


@st.composite
def close_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["empty", "one byte", "code", "code", "long"]))
    if kind == "empty":
        return b""
    if kind == "one byte":
        return draw(st.binary(min_size=1, max_size=1))
    code = draw(st.sampled_from(CODES) | st.integers(0, 65535))
    reason = draw(texts | st.builds(bytes.__add__, texts, bad_utf8))
    if kind == "long":
        reason = b"r" * draw(st.integers(118, 126))
    return close_payload(code, reason)


def control(opcode: int, payload: bytes, mask: bytes) -> tuple[bytes, str]:
    kind = {9: PING, 8: CLOSE}.get(opcode, OTHER)
    return encode(opcode, payload, mask=mask), kind


@st.composite
def controls(draw: st.DrawFn) -> tuple[bytes, str]:
    opcode = draw(st.sampled_from([9, 9, 10, 8]))
    payload = draw(close_payloads()) if opcode == 8 else draw(small)
    return control(opcode, payload, draw(masks))


@st.composite
def messages(draw: st.DrawFn) -> list[tuple[bytes, str]]:
    """A text or binary message, in fragments split anywhere (mid-character too), with
    control frames between them."""
    opcode = draw(st.sampled_from([1, 1, 2]))
    payload = draw(payloads())
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    out: list[tuple[bytes, str]] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        out.append((encode(0 if i else opcode, part, fin=last, mask=draw(masks)), DATA))
        if not last and draw(st.integers(0, 3)) == 0:
            out.append(draw(controls()))
    # a data frame asks for an echo when it ends a message
    return [(raw, OTHER if kind == DATA and not raw[0] & 0x80 else kind) for raw, kind in out]


FLAWS = ["none", "opcode", "rsv", "unmasked", "huge", "control too long", "fragmented control"]


@st.composite
def raw_frames(draw: st.DrawFn) -> list[tuple[bytes, str]]:
    """A frame with one flaw (or none, or any header at all): a reserved opcode, reserved
    bits, unmasked, a declared length beyond ``max_size`` (up to 2**64 - 1, no payload), a
    control frame too long or fragmented; any length width (non-minimal ones too)."""
    flaw = draw(st.sampled_from([*FLAWS, "any"]))
    opcode = draw(st.sampled_from([0, 1, 2, 8, 9, 10]))
    fin, rsv, declared = True, 0, None
    mask: bytes | None = draw(masks)
    if opcode < 8:
        fin = draw(st.booleans())
    if flaw == "opcode":
        opcode = draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
    elif flaw == "rsv":
        rsv = draw(st.sampled_from([0x10, 0x20, 0x40, 0x70]))
    elif flaw == "unmasked":
        mask = None
    elif flaw in {"control too long", "fragmented control"}:
        opcode = draw(st.sampled_from([8, 9, 10]))
        fin = flaw == "control too long"
    elif flaw == "any":
        opcode, fin = draw(st.integers(0, 15)), draw(st.booleans())
        rsv = draw(st.sampled_from([0, 0x10, 0x20, 0x40, 0x70]))
        mask = draw(st.none() | masks)
    if flaw == "huge":
        declared = draw(
            st.sampled_from([MAX_SIZE + 1, 0xFFFF, 0x10000, 2**63, 2**64 - 1])
            | st.integers(MAX_SIZE + 1, 2**64 - 1)
        )
        payload = b""
    elif flaw == "control too long":
        payload = b"c" * draw(st.integers(126, 130) | st.integers(126, MAX_SIZE))
    elif opcode == 8:
        payload = draw(close_payloads())
    else:
        payload = draw(payloads())
    n = len(payload) if declared is None else declared
    widths = [w for w in (0, 7, 16, 64) if w in (0, 64) or n < (126 if w == 7 else 0x10000)]
    width = draw(st.sampled_from(widths))
    raw = encode(opcode, payload, fin=fin, rsv=rsv, mask=mask, width=width, declared=declared)
    kind = OTHER
    if opcode in (0, 1, 2) and fin:
        kind = DATA
    elif opcode == 9:
        kind = PING
    elif opcode == 8:
        kind = CLOSE
    return [(raw, kind)]


# More messages in one read than the queue holds (16: reading pauses, then resumes).
bursts = st.lists(texts, min_size=10, max_size=40).map(
    lambda bodies: [(encode(1, body, mask=b"abcd"), DATA) for body in bodies]
)
items = st.one_of(messages(), controls().map(lambda c: [c]), raw_frames())
items = st.one_of(items, messages(), bursts)


@st.composite
def streams(draw: st.DrawFn) -> tuple[Wire, list[int]]:
    """The stream's bytes and the offsets where it is cut into writes."""
    wire = Wire()
    for item in draw(st.lists(items, min_size=1, max_size=6)):
        for raw, kind in item:
            wire.add(raw, kind)
    ending = draw(st.sampled_from(["close frame", "close frame", "eof", "truncated"]))
    wire.eof = ending != "close frame"
    early, last = wire.early_failure(), wire.raws[-1]
    # (not a frame the lean connection fails on by its header, which websockets waits for)
    on_its_header = early is not None and early[2] and early[1] == len(wire.data)
    if ending == "truncated" and len(last) > 1 and not on_its_header:
        keep = draw(st.integers(1, len(last) - 1))
        del wire.data[len(wire.data) - len(last) + keep :]
        wire.raws[-1] = last[:keep]
        wire.ends[-1] = (len(wire.data), OTHER)
        wire.truncated = True
    size = len(wire.data)
    cuts = draw(
        st.lists(
            st.integers(1, size - 1)
            | st.sampled_from([len(HEAD) - 1, len(HEAD), len(HEAD) + 1, len(HEAD) + 2]),
            max_size=8,
            unique=True,
        )
    )
    return wire, sorted(c for c in cuts if 0 < c < size)


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
