"""How fast one gateway reads N sessions from the sessions KV at once (a reconnect storm's
first step): ``python -m bench.experiments.session_burst [N] [KEYS]``, alternated with a
bucket that allows direct gets (for comparison).

A reconnect storm sends every client of a killed gateway to the others at once; each resume
reads its session (``Sessions.load_session``: one KV get) before the upgrade. This puts
``KEYS`` sessions into a bucket declared as the gateway declares it
(``parley_runtime.jetstream.declare_kv``) on a real nats-server, then gets ``N`` of them
at once from one connection, and reports the time until all N answered and how many did
not answer within the gateway's budget (``sessions.LOAD_ATTEMPT_SECONDS``).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import nats
import nats.errors
import uvloop
from nats.js.api import KeyValueConfig

from parley_contract import subjects
from parley_devstack.servers import NatsServer
from parley_gateway.sessions import LOAD_ATTEMPT_SECONDS
from parley_runtime import jetstream


async def burst(url: str, n: int, keys: int, *, direct: bool) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    want = jetstream.Replicas(1, explicit=True)
    if direct:  # for comparison: direct gets (served by the stream, not the JS API queue)
        kv = await js.create_key_value(
            KeyValueConfig(bucket="sessions_direct", ttl=3600.0, direct=True)
        )
    else:
        kv = await jetstream.declare_kv(js, subjects.KV_SESSIONS, want, ttl=3600.0)
    doc = b'{"principal":{"id":"u","kind":"user"},"conversations":{"conv-x":12}}'
    for i in range(0, keys, 500):
        await asyncio.gather(*(kv.put(f"ses-{j}", doc) for j in range(i, min(keys, i + 500))))

    async def one(i: int) -> float | None:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(kv.get(f"ses-{i % keys}"), LOAD_ATTEMPT_SECONDS)
        except (TimeoutError, nats.errors.Error):
            return None
        return time.perf_counter() - t0

    for rnd in range(2):
        t0 = time.perf_counter()
        got = await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
        ok = sorted(x for x in got if x is not None)
        p50 = ok[len(ok) // 2] * 1000 if ok else 0.0
        sys.stdout.write(
            f"{'direct' if direct else 'api   '} round {rnd + 1}: {n} gets at once: "
            f"{len(ok)} answered within {LOAD_ATTEMPT_SECONDS} s, all done in {wall:.2f} s, "
            f"p50 {p50:.0f} ms\n"
        )
        sys.stdout.flush()
    await nc.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    keys = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp)).start()
        try:
            for direct in (False, True, False, True):
                uvloop.run(burst(server.url, n, keys, direct=direct))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
