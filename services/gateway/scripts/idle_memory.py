"""Measure the gateway's RSS per idle connection (one nats-server, one gateway process).

    uv run python services/gateway/scripts/idle_memory.py --connections 5000
    uv run python services/gateway/scripts/idle_memory.py --connections 5000 --transport socketio

Every connection is a distinct user (worst case: one principal subscription each) that has
received ``connected`` and then stays idle. ``--transport socketio``: the same over
``/socket.io/`` (Engine.IO WebSocket transport, Socket.IO CONNECT, then idle). Prints
baseline RSS, RSS with N connections and KB per connection. Not a test, and not the figure
of record: a quick gateway-only check.
The figure of record is bench's idle scenario (``uv run python -m bench --scenario idle``),
which also joins every connection to a conversation (docs/benchmarks.md, History).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from parley_contract.auth import mint_token
from parley_devstack.servers import ManagedProcess, NatsServer, free_port, wait_port


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_ready(port: int, gw: ManagedProcess) -> None:
    assert gw.proc is not None
    wait_port("127.0.0.1", port, 60, gw.proc)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
            return
        except OSError:
            time.sleep(0.2)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--heartbeat", type=float, default=20.0)
    ap.add_argument("--same-user", action="store_true", help="one principal for all")
    ap.add_argument("--transport", choices=("ws", "socketio"), default="ws")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 1000), hard))
    tmp = Path(tempfile.mkdtemp(prefix="gw-mem-"))
    nats = NatsServer(tmp / "nats").start()
    port = free_port()
    env = {
        "NATS_URL": nats.url,
        "PARLEY_GATEWAY_PORT": str(port),
        "PARLEY_INSTANCE_ID": "gw-mem",
        "PARLEY_GATEWAY_HEARTBEAT_SECONDS": str(args.heartbeat),
        "PARLEY_LOG_LEVEL": "WARNING",
    }
    gw = ManagedProcess("gateway", [sys.executable, "-m", "parley_gateway"], tmp / "gw.log", env)
    gw.start()
    assert gw.proc is not None
    try:
        await asyncio.to_thread(wait_ready, port, gw)
        sio = args.transport == "socketio"

        async def open_one(token: str) -> ClientConnection:
            path = "/socket.io/?EIO=4&transport=websocket&" if sio else "/ws?"
            c = await connect(
                f"ws://127.0.0.1:{port}{path}access_token={token}",
                compression=None,
                open_timeout=60,
            )
            if sio:
                await c.recv()  # Engine.IO open
                await c.send("40")  # Socket.IO CONNECT (the token came with the handshake)
                await c.recv()  # CONNECT answer
            await c.recv()  # connected
            return c

        # warm up (first connection imports/allocates lazily)
        warm = [await open_one(mint_token(f"warm-{i}")) for i in range(20)]
        await asyncio.sleep(2)
        base = rss_kb(gw.proc.pid)
        conns = []
        sem = asyncio.Semaphore(50)
        tokens = [
            mint_token("user-0" if args.same_user else f"user-{i}") for i in range(args.connections)
        ]

        async def one(i: int) -> None:
            async with sem:
                conns.append(await open_one(tokens[i]))

        try:
            await asyncio.gather(*(one(i) for i in range(args.connections)))
        except Exception:
            print(gw.tail(30))  # noqa: T201
            raise
        await asyncio.sleep(5)
        full = rss_kb(gw.proc.pid)
        per = (full - base) / args.connections
        print(  # noqa: T201 - the script's output
            f"transport={args.transport} connections={args.connections} "
            f"baseline_rss={base / 1024:.1f}MB "
            f"rss={full / 1024:.1f}MB per_connection={per:.1f}KB"
        )
        for c in conns + warm:
            await c.close()
    finally:
        gw.stop()
        nats.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
