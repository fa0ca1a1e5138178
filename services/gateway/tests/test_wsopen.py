"""wsopen.py, wshead.py: the front opens a WebSocket from the head it parsed, as websockets.

The parser is checked against websockets' own ``Request.parse`` (same request, or None where
websockets would refuse or read it differently); the handshake over a real socket against
websockets' own ``ServerProtocol.accept`` (same status and body for every RFC 6455 error; a
101 with the right Sec-WebSocket-Accept, followed in the same write by the handler's first
frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import Subprotocol
from websockets.utils import accept_key

from parley_gateway import wshead
from parley_gateway.front import Front, WsRoute, json_response
from parley_gateway.wsconn import LeanConnection, WebSocket

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = [
    ("Host", "x"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
]


def head(lines: list[tuple[str, str]], target: str = "/ws", line: str | None = None) -> bytes:
    first = line if line is not None else f"GET {target} HTTP/1.1"
    return "\r\n".join([first, *(f"{n}: {v}" for n, v in lines)]).encode("latin-1")


def websockets_parse(raw: bytes) -> Request | None:
    reader = StreamReader()
    reader.feed_data(raw + b"\r\n\r\n")
    parser = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        request: Request = done.value
        return request
    except Exception:
        return None
    raise AssertionError("incomplete")


@pytest.mark.parametrize(
    "raw",
    [
        head(GOOD),
        head(GOOD, "/ws?access_token=abc&session=s"),
        head([*GOOD, ("Authorization", "Bearer " + "t" * 900), ("X-Empty", "")]),
        head([*GOOD, ("X-Latin", "caf\xe9")]),
        head([*GOOD, ("X-Tab", "a\tb  ")]),
        head([*GOOD, ("Origin", "https://a"), ("Origin", "https://b")]),
        head(GOOD, line="GET /ws HTTP/1.0"),
        head(GOOD, line="POST /ws HTTP/1.1"),
        head(GOOD, line="GET  /ws HTTP/1.1"),
        head(GOOD, line="GET /ws HTTP/1.1 x"),
        head(GOOD, "/w\xe9"),
        head([*GOOD, ("Content-Length", "0")]),
        head([*GOOD, ("Content-Length", "5")]),
        head([*GOOD, ("Transfer-Encoding", "chunked")]),
        head(GOOD) + b"\r\n folded",
        head(GOOD) + b"\r\nBad Name: x",
        head(GOOD) + b"\r\nNoColon",
        head(GOOD) + b"\r\nX-Ctl: a\x01b",
        head(GOOD) + b"\r\nX-Lf: a\nb",
        head(GOOD) + b"\r\nX-Cr: a\rb",
        head(GOOD) + b"\r\nX-Long: " + b"a" * 9000,
        head(GOOD, "/" + "a" * 9000),
        head(GOOD + [(f"X-{i}", "v") for i in range(130)]),
    ],
)
def test_parse_head_is_websockets_parse_or_none(raw: bytes) -> None:
    ours = wshead.parse_head(raw)
    theirs = websockets_parse(raw)
    if ours is None:
        return  # the front then feeds the head to websockets, which answers it
    assert theirs is not None, "parsed a head websockets refuses"
    assert (ours.path, ours.method, ours.protocol) == (theirs.path, "GET", "HTTP/1.1")
    assert list(ours.headers.raw_items()) == list(theirs.headers.raw_items())


def test_common_heads_take_the_parsed_path() -> None:
    for raw in (head(GOOD), head([*GOOD, ("Authorization", "Bearer x.y.z")], "/ws?a=b")):
        assert wshead.parse_head(raw) is not None


# ---------------------------------------------------------------------- over a socket

FIRST = b'{"event":"connected"}'
REFUSE = "refuse"


@contextlib.asynccontextmanager
async def front_on_a_port() -> AsyncIterator[tuple[int, list[WebSocket]]]:
    opened: list[WebSocket] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not an HTTP request")

    async def process_request(ws: WebSocket, request: Request) -> Response | None:
        if REFUSE in request.path:
            return json_response(401, {"success": False})
        if "boom" in request.path:
            raise RuntimeError("boom")
        return None

    async def handler(ws: WebSocket) -> None:
        opened.append(ws)
        await ws.send(FIRST.decode())
        with contextlib.suppress(Exception):
            async for message in ws:
                await ws.send(message)

    front = Front(app, {"/ws": WsRoute(handler, process_request)}, host="127.0.0.1", port=0)
    server = await front.start()
    port = server.server.sockets[0].getsockname()[1]
    try:
        yield port, opened
    finally:
        front.close()
        await front.wait_closed(grace=2)


async def exchange(port: int, raw: bytes) -> bytes:
    """Send a head; everything the server sends until it closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw + b"\r\n\r\n")
    got = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            if not chunk:
                break
            got += chunk
    writer.close()
    return got


def status_and_body(reply: bytes) -> tuple[int, bytes]:
    head_, _, body = reply.partition(b"\r\n\r\n")
    return int(head_.split(b" ")[1]), body


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        ("no key", [h for h in GOOD if h[0] != "Sec-WebSocket-Key"]),
        ("short key", [*GOOD[:3], ("Sec-WebSocket-Key", "c2hvcnQ="), GOOD[4]]),
        ("bad key", [*GOOD[:3], ("Sec-WebSocket-Key", "not base64!"), GOOD[4]]),
        ("two keys", [*GOOD, ("Sec-WebSocket-Key", KEY)]),
        ("version 8", [*GOOD[:4], ("Sec-WebSocket-Version", "8")]),
        ("no version", GOOD[:4]),
        ("no connection upgrade", [GOOD[0], GOOD[1], ("Connection", "keep-alive"), *GOOD[3:]]),
        ("upgrade h2c too", [GOOD[0], ("Upgrade", "websocket, h2c"), *GOOD[2:]]),
        ("two origins", [*GOOD, ("Origin", "https://a"), ("Origin", "https://b")]),
    ],
)
async def test_handshake_errors_are_websockets_answers(
    name: str, lines: list[tuple[str, str]]
) -> None:
    raw = head(lines)
    assert wshead.parse_head(raw) is not None, name  # the parsed path answers it
    expected = ServerProtocol().accept(Request("/ws", Headers(lines)))
    async with front_on_a_port() as (port, opened):
        reply = await exchange(port, raw)
    assert status_and_body(reply) == (expected.status_code, expected.body), name
    assert b"\r\nServer: parley-gateway\r\n" in reply.partition(b"\r\n\r\n")[0] + b"\r\n"
    assert opened == []


async def test_the_101_and_the_first_frame_arrive_together() -> None:
    async with front_on_a_port() as (port, opened):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A frame right behind the head (before the 101): kept for the handler, as websockets.
        early = Frame(Opcode.TEXT, b"early").serialize(mask=True, extensions=[])
        writer.write(head(GOOD) + b"\r\n\r\n" + early)
        first = await asyncio.wait_for(reader.read(65536), 5)
        response, _, rest = first.partition(b"\r\n\r\n")
        lines = response.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        fields = dict(line.split(": ", 1) for line in lines[1:])
        assert fields["Sec-WebSocket-Accept"] == accept_key(KEY)
        assert fields["Upgrade"] == "websocket" and fields["Connection"] == "Upgrade"
        assert fields["Server"] == "parley-gateway" and fields["Date"].endswith("GMT")
        assert "Sec-WebSocket-Extensions" not in fields  # compression stays off
        assert rest.startswith(bytes((0x81, len(FIRST))) + FIRST)
        rest = rest[2 + len(FIRST) :]
        if not rest:
            rest = await asyncio.wait_for(reader.read(65536), 5)
        assert rest == bytes((0x81, 5)) + b"early"  # the early frame, echoed after the open
        assert len(opened) == 1
        assert isinstance(opened[0], LeanConnection)  # not websockets' connection
        writer.close()


async def test_process_request_answers_and_failures() -> None:
    async with front_on_a_port() as (port, opened):
        refused = await exchange(port, head(GOOD, f"/ws?{REFUSE}"))
        assert status_and_body(refused) == (401, b'{"success":false}')
        failed = await exchange(port, head(GOOD, "/ws?boom"))
        assert status_and_body(failed)[0] == 500
        assert opened == []


# ---------------------------------------------------------------------- the plain accept

_VARIANTS: list[tuple[str, str | None]] = [
    ("Connection", "upgrade"),
    ("Connection", "UPGRADE"),
    ("Connection", "keep-alive, Upgrade"),
    ("Connection", "Upgrade,"),
    ("Connection", "Upgradee"),
    ("Connection", None),
    ("Upgrade", "WebSocket"),
    ("Upgrade", "websocket, h2c"),
    ("Upgrade", "websocket/13"),
    ("Upgrade", None),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZR=="),  # non-canonical last bits
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ="),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==="),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZ-=="),
    ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAAA"),  # 18 bytes
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25j=Q=="),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZ=Q="),
    ("Sec-WebSocket-Key", None),
    ("Sec-WebSocket-Version", "13, 8"),
    ("Sec-WebSocket-Version", "013"),
    ("Sec-WebSocket-Version", None),
]
_EXTRA: list[list[tuple[str, str]]] = [
    [],
    [("Origin", "https://a")],
    [("Origin", "https://a"), ("Origin", "https://b")],
    [("Sec-WebSocket-Protocol", "chat")],
    [("Sec-WebSocket-Protocol", "bad value!")],
    [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")],
    [("Sec-WebSocket-Key", KEY)],
    [("Connection", "Upgrade")],
    [("Upgrade", "websocket")],
    [("Sec-WebSocket-Version", "13")],
]


def _heads() -> list[list[tuple[str, str]]]:
    out = [GOOD + extra for extra in _EXTRA]
    for name, value in _VARIANTS:
        base = [h for h in GOOD if h[0] != name] + ([(name, value)] if value is not None else [])
        out += [base + extra for extra in _EXTRA]
    return out


def _websockets_answer(lines: list[tuple[str, str]]) -> tuple[Any, ...]:
    protocol = ServerProtocol()
    try:
        accept, extensions, subprotocol = protocol.process_request(Request("/ws", Headers(lines)))
    except Exception as exc:
        return ("refused", type(exc))
    return (accept, extensions, subprotocol, protocol.origin, protocol.extensions)


@pytest.mark.parametrize("lines", _heads())
def test_plain_accept_is_websockets_or_defers(lines: list[tuple[str, str]]) -> None:
    protocol = ServerProtocol()
    ours = wshead.plain_accept(protocol, Request("/ws", Headers(lines)))
    theirs = _websockets_answer(lines)
    if ours is None:  # deferred: websockets' own checks answer
        return
    assert (ours, None, None, protocol.origin, protocol.extensions) == theirs
    assert protocol.subprotocol is None


def test_plain_accept_takes_the_common_heads() -> None:
    for lines in (
        GOOD,
        [*GOOD, ("Origin", "https://a")],
        [("Connection", "upgrade") if h[0] == "Connection" else h for h in GOOD],
        [*GOOD, ("Sec-WebSocket-Extensions", "permessage-deflate")],
    ):
        assert wshead.plain_accept(ServerProtocol(), Request("/ws", Headers(lines))) == (
            accept_key(KEY)
        )
    assert (
        wshead.plain_accept(
            ServerProtocol(subprotocols=[Subprotocol("chat")]), Request("/ws", Headers(GOOD))
        )
        is None
    )


def test_header_lines_parse_as_websockets_does() -> None:
    """parse_head's one regex per header line against websockets' grammar (partition at the
    first colon, token name, value stripped of blanks, VCHAR/SP/HTAB/obs-text), on random
    lines of the bytes that matter and on long runs of blanks."""
    rng = random.Random(16)
    alphabet = b"aZ:- \t\x01\x7f\x80\xff\r;=,"
    lines = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20_000)]
    lines += [b"X: " + b" " * 3000 + b"b", b"X:" + b" \t" * 2000, b"X: a" + b" " * 3000]
    for line in lines:
        request = wshead.parse_head(b"GET /ws HTTP/1.1\r\n" + line)
        theirs = websockets_parse(b"GET /ws HTTP/1.1\r\n" + line)
        if not line or b"\r" in line or b"\n" in line:
            continue  # not one header line
        if request is None:
            assert theirs is None, line
        else:
            assert theirs is not None, line
            assert list(request.headers.raw_items()) == list(theirs.headers.raw_items()), line
