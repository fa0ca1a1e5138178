"""The conversation service's group commit alone: the real ``Sequencer`` and ``MongoStore``
in this process against the embedded store, no NATS, no gateway. Sends arrive at a fixed
rate over 100 conversations (open loop); prints the acked rate, ack latency and the time of
each store call per batch:
``python -m bench.experiments.sequencer_inprocess [rate/s] [seconds] [write concern] [out]``
(``journaled``, the default, with the store in its durable mode; ``acknowledged``: the store
without --sync-on-commit, the writes not waiting for the journal: what durability costs;
``out``: py-spy the store process meanwhile, only samples holding its GIL, raw stacks there,
the top frames in the result).
Shows where a batch's time goes (authorizing read, log insert, totals) without the rest of
the system competing for the CPU, and the CPU time per acked message of the store server and
of this process.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.profiling import PySpy, summarize_collapsed
from bench.system import cpu_seconds
from parley_contract.commands import ConversationCreate, MessageSend
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_conversation import domain
from parley_conversation.sequencer import Sequencer
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer

CONVERSATIONS = 100
TIMED = ("get_conversations", "append_events", "insert_messages", "add_totals")


def _timed(fn: Callable[..., Awaitable[Any]], out: list[float]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            out.append((time.perf_counter() - start) * 1000)

    return wrapper


async def measure(
    url: str,
    rate: float,
    seconds: float,
    write_concern: str = "journaled",
    store_pid: int | None = None,
) -> dict[str, Any]:
    store = MongoStore(url, "bench_sequencer", write_concern=write_concern)
    await store.init()
    calls: dict[str, list[float]] = defaultdict(list)
    for name in TIMED:
        setattr(store, name, _timed(getattr(store, name), calls[name]))
    batches: list[int] = []

    async def publish(subject: str, payload: bytes) -> None:
        return None

    seq = Sequencer(store, publish, max_batch=500, totals_interval=0.25, on_batch=batches.append)
    users = [Principal(id=f"u{i}", kind=PrincipalKind.USER) for i in range(CONVERSATIONS)]
    for i, user in enumerate(users):
        conv = domain.new_conversation(user, ConversationCreate(conversation_id=f"c{i}"))
        await store.insert_conversation(conv)
    latencies: list[float] = []

    async def one(i: int, k: int) -> None:
        cmd = MessageSend(conversation_id=f"c{i}", content=f"m{k}", client_message_id=f"k{k}")
        message = domain.new_message(users[i], cmd)
        start = time.perf_counter()
        await seq.send(users[i], message)
        latencies.append((time.perf_counter() - start) * 1000)

    tasks: list[asyncio.Task[None]] = []
    store_cpu0 = cpu_seconds(store_pid) if store_pid else 0.0
    own_cpu0 = time.process_time()
    t0 = time.perf_counter()
    k = 0
    while time.perf_counter() - t0 < seconds:
        due = int((time.perf_counter() - t0) * rate)
        while k < due:
            tasks.append(asyncio.create_task(one(k % CONVERSATIONS, k)))
            k += 1
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    await seq.drain()
    own_cpu = time.process_time() - own_cpu0
    store_cpu = cpu_seconds(store_pid) - store_cpu0 if store_pid else 0.0
    await store.close()
    latencies.sort()
    return {
        "offeredPerSecond": rate,
        "ackedPerSecond": round(len(latencies) / elapsed, 1),
        "ackP50Ms": round(latencies[len(latencies) // 2], 1),
        "ackP99Ms": round(latencies[int(len(latencies) * 0.99)], 1),
        # CPU per acked message, ms: the store server's (totals included, drained), and this
        # process's (the load generator's share included: an upper bound for the service).
        "storeCpuMsPerMsg": round(store_cpu * 1000 / max(1, len(latencies)), 3),
        "clientCpuMsPerMsg": round(own_cpu * 1000 / max(1, len(latencies)), 3),
        "batches": len(batches),
        "batchMean": round(statistics.mean(batches), 1) if batches else 0,
        "callsMs": {
            name: {"n": len(v), "mean": round(statistics.mean(v), 1), "max": round(max(v), 1)}
            for name, v in calls.items()
            if v
        },
    }


def main() -> None:
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 250.0
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
    concern = sys.argv[3] if len(sys.argv) > 3 else "journaled"
    profile = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    with tempfile.TemporaryDirectory() as tmp:
        server = StoreServer(Path(tmp), sync_on_commit=concern != "acknowledged").start()
        try:
            pid = server.process.proc.pid if server.process and server.process.proc else None
            spy = PySpy(pid, profile, seconds + 2, gil=True) if profile and pid else None
            result = asyncio.run(measure(server.url, rate, seconds, concern, pid))
            if spy is not None:
                spy.wait()
                result["storeProfile"] = summarize_collapsed(spy.out, seconds + 2, spy.rate, 15)
        finally:
            server.stop()
    sys.stdout.write(f"{result}\n")


if __name__ == "__main__":
    main()
