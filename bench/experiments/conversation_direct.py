"""The conversation service alone: ``message:send`` requests straight over NATS (no gateway,
no WebSocket) at 1, 10 and 50 in flight, against a Stack with the embedded store:
``python -m bench.experiments.conversation_direct [seconds] [in-flight,...] [--plain]``, each to
its conversation's partition subject as the gateways send (``--plain``: the plain subject, any
replica, through FastStream). Separates the service + store ceiling from the gateway in the
``persisted`` scenario, and gives the CPU
milliseconds per acked message of the store and of the conversation service (from /proc),
and the service's mean group-commit batch (its ``parley_conversation_batch_size``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats
import nats.errors

from bench.system import cpu_seconds
from parley_contract import subjects
from parley_contract.events import Event
from parley_contract.routes import ROUTES
from parley_devstack.servers import free_port
from parley_devstack.stack import Stack, StackConfig

CONVERSATIONS = 50
SEND = ROUTES[Event.MESSAGE_SEND]


def _batches(metrics_url: str | None) -> tuple[float, float]:
    """(batches, writes) committed so far, from the service's /metrics."""
    if metrics_url is None:
        return 0.0, 0.0
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    found = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        for part in found:
            if line.startswith(f"parley_conversation_batch_size_{part} "):
                found[part] = float(line.split()[-1])
    return found["count"], found["sum"]


def _body(user: str, data: dict[str, Any]) -> bytes:
    principal = {"id": user, "kind": "user", "name": None}
    return json.dumps({"principal": principal, "data": data, "instanceId": "bench"}).encode()


async def measure(
    nats_url: str,
    seconds: float,
    levels: list[int],
    pids: dict[str, int],
    metrics_url: str | None = None,
    *,
    plain: bool = False,
) -> list[dict[str, Any]]:
    nc = await nats.connect(nats_url)
    convs = [f"direct-c{i}" for i in range(CONVERSATIONS)]
    for c in convs:
        await nc.request(
            subjects.command(Event.CONVERSATION_CREATE),
            _body("direct-u", {"conversationId": c}),
            timeout=10,
        )
    out = []
    for in_flight in levels:
        lat: list[float] = []
        failed = 0

        async def one(conv: str, k: int, lat: list[float] = lat) -> bool:
            t = time.perf_counter()
            data = {"conversationId": conv, "content": f"m{k}"}
            body = _body("direct-u", data)
            plain_subject = subjects.command(Event.MESSAGE_SEND)
            try:
                # The conversation's partition subject, as a gateway sends it (affinity),
                # or the plain one (any replica, through FastStream).
                subject = plain_subject if plain else SEND.subject_for(data)
                reply = await nc.request(subject, body, timeout=30)
            except nats.errors.NoRespondersError:
                # Nobody owns the partition yet (just started): the plain subject, as the
                # gateways fall back.
                reply = await nc.request(plain_subject, body, timeout=30)
            lat.append((time.perf_counter() - t) * 1000)
            return bool(json.loads(reply.data).get("success"))

        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        batches0 = _batches(metrics_url)
        t0 = time.perf_counter()
        sent = 0
        while time.perf_counter() - t0 < seconds:
            oks = await asyncio.gather(
                *(one(convs[(sent + i) % CONVERSATIONS], sent + i) for i in range(in_flight))
            )
            failed += sum(1 for ok in oks if not ok)
            sent += in_flight
        elapsed = time.perf_counter() - t0
        batches1 = _batches(metrics_url)
        batch_mean = (batches1[1] - batches0[1]) / max(1.0, batches1[0] - batches0[0])
        cpu_ms = {
            f"{name}CpuMsPerMessage": round((cpu_seconds(pid) - cpu0[name]) * 1000 / sent, 2)
            for name, pid in pids.items()
        }
        lat.sort()
        out.append(
            {
                "inFlight": in_flight,
                "messagesPerSecond": round(sent / elapsed, 1),
                "p50Ms": round(lat[len(lat) // 2], 1),
                "p99Ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
                "failed": failed,
                **cpu_ms,
                "batchMean": round(batch_mean, 1),
            }
        )
    await nc.close()
    return out


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    levels = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 10, 50]
    plain = "--plain" in sys.argv[3:]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StackConfig(
            workdir=Path(tmp),
            gateway_ports=[free_port()],
            agent_bridges=0,
            log_level="WARNING",
            database="bench_direct",
        )
        with Stack(cfg) as stack:
            procs = {"conversation": stack.conversation[0].process.proc}
            if stack.store is not None and stack.store.process is not None:
                procs["store"] = stack.store.process.proc
            pids = {name: p.pid for name, p in procs.items() if p is not None}
            metrics = f"{stack.conversation[0].base_url}/metrics"
            out = asyncio.run(measure(stack.nats_url, seconds, levels, pids, metrics, plain=plain))
    sys.stdout.write(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
