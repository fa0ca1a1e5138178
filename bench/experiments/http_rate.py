"""HTTP request rate of a running gateway's public port: ``python -m bench.experiments.http_rate``.

    python -m bench.experiments.http_rate --url http://127.0.0.1:8001/healthz --seconds 5

Three ways of asking, each for ``--seconds``, with ``--connections`` clients at once:
a new TCP connection per request (what the port allowed before front.py: every HTTP answer
closed the connection), keep-alive (one request at a time per connection) and pipelined
(``--depth`` requests written at once per connection). Raw asyncio sockets, so the client
costs little; client and gateway share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from urllib.parse import urlsplit


async def _read_response(reader: asyncio.StreamReader) -> bool:
    """One response; whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    keep = True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    await reader.readexactly(length)
    return keep


async def _client(host: str, port: int, req: bytes, *, mode: str, depth: int, until: float) -> int:
    done = 0
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < until:
        if writer is None or mode == "new":
            if writer is not None:
                writer.close()
            reader, writer = await asyncio.open_connection(host, port)
        assert reader is not None
        n = depth if mode == "pipelined" else 1
        writer.write(req * n)
        keep = True
        for _ in range(n):
            try:
                keep = await _read_response(reader) and keep
            except (asyncio.IncompleteReadError, ConnectionError):
                keep = False  # a server that closes after each answer drops the rest
                break
            done += 1
        if not keep:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()
    return done


async def run(url: str, seconds: float, connections: int, depth: int) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    for mode in ("new", "keepalive", "pipelined"):
        req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        until = time.monotonic() + seconds
        started = time.monotonic()
        counts = await asyncio.gather(
            *(
                _client(host, port, req, mode=mode, depth=depth, until=until)
                for _ in range(connections)
            )
        )
        elapsed = time.monotonic() - started
        rate = sum(counts) / elapsed
        sys.stdout.write(f"{mode:10s} {rate:8.0f} requests/s ({connections} connections)\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="http://127.0.0.1:8001/healthz")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--depth", type=int, default=8)
    args = ap.parse_args()
    asyncio.run(run(args.url, args.seconds, args.connections, args.depth))


if __name__ == "__main__":
    main()
