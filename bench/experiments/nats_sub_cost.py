"""RSS cost of one nats-py subscription with a callback, the way the gateway subscribes once
per connected principal (``Hub.register``): ``python -m bench.experiments.nats_sub_cost``.

nats-py gives every subscription that has a callback its own asyncio task and queue; this
measures what that costs per subscription, next to a subscription without a callback.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nats

from bench.system import rss_kb
from parley_devstack.servers import NatsServer


async def measure(url: str, n: int, with_cb: bool) -> float:
    nc = await nats.connect(url)

    async def cb(msg: object) -> None:
        return None

    gc.collect()
    await asyncio.sleep(0.2)
    before = rss_kb(_pid())
    subs = []
    for i in range(n):
        if with_cb:
            subs.append(await nc.subscribe(f"bench.p.{i}.evt", cb=cb))
        else:
            subs.append(await nc.subscribe(f"bench.p.{i}.evt"))
    await nc.flush()
    gc.collect()
    await asyncio.sleep(0.2)
    after = rss_kb(_pid())
    for s in subs:
        await s.unsubscribe()
    await nc.close()
    return (after - before) / n


def _pid() -> int:
    return os.getpid()


async def one(n: int, with_cb: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp)).start()
        try:
            return await measure(server.url, n, with_cb)
        finally:
            server.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    if len(sys.argv) > 2:  # one measurement in a fresh process
        sys.stdout.write(f"{asyncio.run(one(n, sys.argv[2] == 'cb'))}\n")
        return
    res = {}
    for mode in ("cb", "nocb"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.experiments.nats_sub_cost", str(n), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        res[mode] = round(float(out.stdout.strip().splitlines()[-1]), 2)
    sys.stdout.write(
        json.dumps(
            {
                "subscriptions": n,
                "kbPerSubscriptionWithCallback": res["cb"],
                "kbPerSubscriptionWithoutCallback": res["nocb"],
            }
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
