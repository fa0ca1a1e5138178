"""What the gateway's publish window adds to an ephemeral event's latency at low load:
``python -m bench.experiments.publish_window [RATE] [SECONDS]``.

A gateway publishes typing/presence through ``Bus.publish`` (batched into one NATS socket
write per window). This connects a real ``Bus`` to a nats-server, publishes ``RATE``
events/s to one conversation's ephemeral subject and measures, on a second NATS connection
in the same process and loop, the time from ``publish()`` to the message's arrival, first
with the window as it was before issue 16 (every publish waits ``PUBLISH_WINDOW_SECONDS``:
``call_later``), then as it is (a batch at most once per window; when quiet, at the end of
the loop iteration). Same process, same loop, same machine load for both: the difference
is the window.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
import uvloop
from nats.aio.msg import Msg

from parley_contract import jsonutil, subjects
from parley_devstack.servers import NatsServer
from parley_gateway import bus as bus_module
from parley_gateway.bus import PUBLISH_WINDOW_SECONDS, Bus
from parley_gateway.metrics import Metrics
from parley_gateway.settings import Settings


class OldWindowBus(Bus):
    """``publish_soon`` as before issue 16: always one window later."""

    def publish_soon(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self._outbox.append((subject, payload, headers))
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_later(PUBLISH_WINDOW_SECONDS, self._send_outbox)


async def measure(url: str, kind: type[Bus], rate: float, seconds: float) -> list[float]:
    settings = Settings(nats_url=url, instance_id=f"pw-{kind.__name__}")
    b = kind(settings, Metrics())
    b.nc = await nats.connect(url)
    sub_nc = await nats.connect(url)
    cid = "pw-conv"
    sent: dict[int, float] = {}
    lat: list[float] = []

    async def on_msg(msg: Msg) -> None:
        n = jsonutil.loads(msg.data)["data"]["n"]
        lat.append((time.perf_counter() - sent.pop(n)) * 1000)

    await sub_nc.subscribe(subjects.conversation_ephemeral(cid), cb=on_msg)
    await sub_nc.flush()
    interval = 1.0 / rate
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sent[n] = time.perf_counter()
        await b.publish(cid, {"event": "typing:start", "data": {"n": n}})
        n += 1
        await asyncio.sleep(interval)
    await asyncio.sleep(0.2)
    await b.nc.close()
    await sub_nc.close()
    return lat


def summary(lat: list[float]) -> str:
    lat = sorted(lat)
    q = statistics.quantiles(lat, n=100)
    return f"n={len(lat)} p50 {q[49]:.3f} ms, p90 {q[89]:.3f} ms, p99 {q[98]:.3f} ms"


async def main(rate: float, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp)).start()
        try:
            for rnd in range(2):  # alternated: before, after, before, after
                for kind in (OldWindowBus, Bus):
                    lat = await measure(server.url, kind, rate, seconds)
                    name = "before (always a window)" if kind is OldWindowBus else "after"
                    sys.stdout.write(f"round {rnd + 1} {name:26s} {summary(lat)}\n")
                    sys.stdout.flush()
        finally:
            server.stop()


if __name__ == "__main__":
    assert bus_module.PUBLISH_WINDOW_SECONDS == PUBLISH_WINDOW_SECONDS
    args = [float(a) for a in sys.argv[1:]]
    uvloop.run(main(args[0] if args else 250.0, args[1] if len(args) > 1 else 5.0))
