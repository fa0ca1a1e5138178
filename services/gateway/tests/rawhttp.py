"""HTTP/1.1 on a raw socket, as a hostile or plain client writes it: requests as bytes,
responses read one at a time, so a test sees exactly what a client sees on the wire
(keep-alive, pipelining, a server that closes; test_front.py, test_origins.py)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from parley_contract import jsonutil

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return jsonutil.loads(self.body)


class Raw:
    """One TCP connection; requests written as bytes, responses read one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, *, head_only: bool = False, timeout: float = 10) -> Reply:  # noqa: ASYNC109
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if not head_only and "content-length" in headers:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), timeout
            )
        return Reply(status, headers, body)

    async def closed_by_server(self, timeout: float = 10) -> bool:  # noqa: ASYNC109
        """Whether the server closes the connection (EOF) with nothing more to read."""
        rest = await asyncio.wait_for(self.reader.read(), timeout)
        return rest == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def exchange(port: int, data: bytes) -> Reply:
    """One request (``data``) on a connection of its own, and its reply."""
    raw = await Raw.open(port)
    try:
        await raw.send(data)
        return await raw.reply()
    finally:
        await raw.close()


def request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
) -> bytes:
    """The request's bytes. ``headers`` as pairs may name a header more than once (as a
    hostile client may); a ``Host`` among them replaces the default one."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if not any(name.lower() == "host" for name, _ in pairs):
        pairs.insert(0, ("Host", "gateway"))
    lines = [f"{method} {path} HTTP/1.1"]
    for name, value in pairs:
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def assert_envelope(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"].startswith("application/json")
    doc: dict[str, Any] = reply.json()
    assert doc["success"] is False and doc["error"]["code"] == code, doc
    return doc
