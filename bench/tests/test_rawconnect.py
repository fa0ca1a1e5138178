"""The generator's bare-socket handshake (``rawConnectOne``, the connects scenario): a real
WebSocket server's 101 and hello are accepted; a refusal, a wrong Sec-WebSocket-Accept or a
first frame that is not the hello count as failures (no timed test)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.utils import accept_key

from bench.generator import Client, GeneratorPool
from bench.runs import mock_system


def _accepted(head: bytes, frame: bytes) -> bytes:
    """A well-formed 101 for ``head`` followed by ``frame``."""
    key = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: %s\r\n\r\n%s" % (accept_key(key).encode(), frame)
    )


pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node >= 20")


@contextmanager
def _answering(reply: Callable[[bytes], bytes]) -> Iterator[int]:
    """A TCP server that answers every request head with ``reply(head)`` (and keeps the
    socket)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(4096)
            conn.sendall(reply(buf))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for conn in held:
            conn.close()


def _connect(url: str, n: int, tmp_path: Path) -> dict[str, object]:
    clients = [Client(url, f"token-{i}", 0, f"u{i}") for i in range(n)]
    pool = GeneratorPool(clients, threads=1, per_process=100, log_dir=tmp_path)
    try:
        return pool.connect(concurrency=5, timeout_ms=5000, raw=True)
    finally:
        pool.close()


def test_raw_handshake_against_a_websocket_server(tmp_path: Path) -> None:
    with mock_system(1) as system:
        res = _connect(system.gateways[0].ws_url, 12, tmp_path)
    assert res["ok"] == 12 and res["failed"] == 0


# Answers a raw client refuses, the connect's and the resume's alike (upgradeAnswer), and why.
REFUSALS: list[tuple[Callable[[bytes], bytes], str]] = [
    (lambda _: b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", "http 401"),
    (
        lambda _: (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        ),
        "bad accept",
    ),
    (lambda head: _accepted(head, b'\x81\x11{"event":"error"}'), "first frame error"),
]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        *REFUSALS,
        (lambda head: _accepted(head, b"\x82\x02{}"), "first frame not a short text frame"),
    ],
)
def test_raw_handshake_refusals_fail(
    reply: Callable[[bytes], bytes], error: str, tmp_path: Path
) -> None:
    with _answering(reply) as port:
        res = _connect(f"ws://127.0.0.1:{port}/ws", 3, tmp_path)
    assert res["ok"] == 0
    assert res["errors"] == {error: 3}


def _resume(url: str, n: int, tmp_path: Path, *, raw: bool = True) -> dict[str, object]:
    clients = [Client(url, f"token-{i}", 0, f"u{i}") for i in range(n)]
    pool = GeneratorPool(clients, threads=1, per_process=100, log_dir=tmp_path)
    try:
        return pool.resume(
            [url] * n, concurrency=5, kill_time=time.monotonic(), timeout_ms=5000, raw=raw
        )
    finally:
        pool.close()


HELLO = b'{"event":"reconnected","data":{"sessionId":"s1","conversations":[]}}'


def _hello(head: bytes) -> bytes:
    return _accepted(head, b"\x81" + bytes([len(HELLO)]) + HELLO)


@pytest.mark.parametrize("raw", [True, False])
def test_a_resume_is_back_at_its_hello(raw: bool, tmp_path: Path) -> None:
    """The storm's resume, on a bare socket (``rawResumeOne``) or through the ws client
    (``resumeOne``): back at ``reconnected`` when it restored no conversation."""
    with _answering(_hello) as port:
        res = _resume(f"ws://127.0.0.1:{port}/ws", 3, tmp_path, raw=raw)
    assert res["ok"] == 3 and res["failed"] == 0, res


@pytest.mark.parametrize(("reply", "error"), REFUSALS)
def test_raw_resume_refusals_fail(
    reply: Callable[[bytes], bytes], error: str, tmp_path: Path
) -> None:
    """The same 101 and accept checks as the connect's, then ``reconnected`` first."""
    with _answering(reply) as port:
        res = _resume(f"ws://127.0.0.1:{port}/ws", 3, tmp_path)
    assert res["ok"] == 0
    assert res["errors"] == {error: 3}
