"""A connect's CPU in the gateway's own code, in one process (issue 16, connects):
``python -m bench.experiments.connect_inprocess [N] [ROUNDS] [--profile] [--no-gc]``.

A real gateway (this checkout's, or the source put first on ``PYTHONPATH``) on a real
nats-server, in this process and event loop (uvloop); N distinct users' upgrade heads (a
JWT each in ``Authorization``, as the connects scenario's raw client sends them) are fed
to the front's sniffer over fake transports that keep what is written. So a round measures
the gateway's Python work per connect (head, JWT, the lean connection, register, hello,
session, the NATS batches, the collector) without the client sockets' kernel work, the
generator or a shared box's scheduling: ``time.process_time`` per connect, and the
collector's collections and time per generation (``gc.callbacks``). The gateway's collector
settings are the ones ``python -m parley_gateway`` makes (startup heap frozen, first
generation every ``PARLEY_GATEWAY_GC_GEN0``). Connections stay open across rounds (as in
an idle population growing). ``--profile``: cProfile of the last round (cumulative, top
40); ``--no-gc``: the collector off in the rounds (what it costs, by difference).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import uvloop

from parley_contract.auth import mint_token
from parley_devstack.servers import NatsServer, free_port
from parley_gateway.front import _Sniffer
from parley_gateway.server import Gateway
from parley_gateway.settings import Settings


class FakeTransport:
    """What the front and the lean connection use of a transport; writes are kept."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False
        self.protocol: object = None

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def get_protocol(self) -> object:
        return self.protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def heads(port: int, tag: str, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        token = mint_token(f"u-{tag}-{i}", name=f"User {i}")
        key = base64.b64encode(os.urandom(16)).decode()
        out.append(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
    return out


async def connect_all(gw: Gateway, batch: list[bytes]) -> int:
    """Feed the heads to the sniffer (50 per loop iteration); how many got their 101."""
    assert gw.front is not None
    transports = []
    for start in range(0, len(batch), 50):
        for head in batch[start : start + 50]:
            transport = FakeTransport()
            sniffer = _Sniffer(gw.front)
            transport.protocol = sniffer
            sniffer.connection_made(cast(asyncio.Transport, transport))
            sniffer.data_received(head)
            transports.append(transport)
        for _ in range(3):
            await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # the last batch's hellos and NATS writes
    return sum(1 for t in transports if t.out and t.out[0].startswith(b"HTTP/1.1 101"))


async def main(n: int, rounds: int, profile: bool, no_gc: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nats = NatsServer(Path(tmp)).start()
        try:
            await run(nats.url, n, rounds, profile, no_gc)
        finally:
            nats.stop()


async def run(url: str, n: int, rounds: int, profile: bool, no_gc: bool) -> None:
    port = free_port()
    settings = Settings(
        environment="development",
        web_dist=None,
        nats_url=url,
        port=port,
        instance_id=f"inproc-{port}",
        drain_seconds=0.1,
    )
    gw = Gateway(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    while not gw.hub.ready:  # noqa: ASYNC110 - a property, no event to wait for
        await asyncio.sleep(0.05)
    await connect_all(gw, heads(port, "warm", 500))
    # As python -m parley_gateway does (__main__.py).
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(settings.gc_gen0, gen1, gen2)
    collections: dict[int, list[float]] = {}
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            row = collections.setdefault(info["generation"], [0, 0.0])
            row[0] += 1
            row[1] += time.process_time() - started[0]

    gc.callbacks.append(on_gc)
    try:
        for r in range(rounds):
            batch = heads(port, f"r{r}", n)
            collections.clear()
            profiler = cProfile.Profile() if profile and r == rounds - 1 else None
            if no_gc:
                gc.disable()
            cpu = time.process_time()
            if profiler is not None:
                profiler.enable()
            ok = await connect_all(gw, batch)
            if profiler is not None:
                profiler.disable()
            cpu = time.process_time() - cpu
            gc.enable()
            spent = ", ".join(
                f"gen{g} {int(c)}x {1e3 * t:.1f} ms" for g, (c, t) in sorted(collections.items())
            )
            sys.stdout.write(
                f"round {r}: {ok}/{n} opened, {1e3 * cpu / n:.4f} ms CPU per connect"
                f" (collector: {spent or 'none'})\n"
            )
            sys.stdout.flush()
            if profiler is not None:
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    finally:
        gc.callbacks.remove(on_gc)
        stop.set()
        await asyncio.wait_for(task, 60)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=4000, help="connects per round")
    parser.add_argument("rounds", type=int, nargs="?", default=4)
    parser.add_argument("--profile", action="store_true", help="cProfile the last round")
    parser.add_argument("--no-gc", action="store_true", help="the collector off in the rounds")
    args = parser.parse_args()
    uvloop.run(main(args.n, args.rounds, args.profile, args.no_gc))
