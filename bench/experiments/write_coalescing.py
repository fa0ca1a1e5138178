"""What a socket write per delivery costs, and what coalescing saves:
``python -m bench.experiments.write_coalescing``.

The gateway profile is dominated by ``Connection.send_data`` (one ``transport.write``, so one
``send()`` syscall, per delivered frame). This serves 200 connections on uvloop and sends
events of 120 bytes to 20-member groups, either writing each frame at once (as the gateway
does) or appending to a per-connection buffer flushed once per batch of events (a flush per
loop tick); it reports the server's CPU microseconds per delivered frame. A reader process
drains every connection.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import sys
import time
from typing import cast

import uvloop

CONNS = 200
GROUP = 20
FRAME = b"\x81\x78" + b"x" * 120  # a 120-byte unmasked text frame


def reader(port: int, ready: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CONNS)]
        ready.set()

        async def drain(r: asyncio.StreamReader) -> None:
            while await r.read(65536):
                pass

        await asyncio.gather(*(drain(r) for r, _ in conns))

    uvloop.run(main())


async def serve(events: int, batch: int, coalesce: bool) -> float:
    transports: list[asyncio.Transport] = []
    got_all = asyncio.Event()

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transports.append(transport)
            if len(transports) == CONNS:
                got_all.set()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Proto, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=reader, args=(port, ready), daemon=True)
    proc.start()
    await got_all.wait()
    groups = [transports[i : i + GROUP] for i in range(0, CONNS, GROUP)]
    buffers: dict[asyncio.Transport, bytearray] = {}
    cpu0 = time.process_time()
    sent = 0
    # Each tick: `batch` events in every group, so each connection gets `batch` frames per
    # tick (as when one NATS read carries several events of a conversation).
    for _ in range(0, events, batch * len(groups)):
        for members in groups:
            for _k in range(batch):
                for t in members:
                    if coalesce:
                        buf = buffers.get(t)
                        if buf is None:
                            buffers[t] = bytearray(FRAME)
                        else:
                            buf += FRAME
                    else:
                        t.write(FRAME)
                    sent += 1
        if coalesce:
            for t, buf in buffers.items():
                t.write(bytes(buf))
            buffers.clear()
        await asyncio.sleep(0)  # one loop tick per batch
        while any(t.get_write_buffer_size() > 1 << 20 for t in transports):  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    cpu = time.process_time() - cpu0
    server.close()
    for t in transports:
        t.close()
    proc.terminate()
    return cpu / sent * 1e6


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    out = []
    for batch in (1, 2, 4, 8):
        for coalesce in (False, True):
            if batch == 1 and coalesce:
                continue
            us = uvloop.run(serve(events, batch, coalesce))
            out.append(
                {
                    "framesPerConnectionPerTick": batch,
                    "coalesced": coalesce,
                    "serverCpuMicrosecondsPerDelivery": round(us, 2),
                }
            )
    sys.stdout.write(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
