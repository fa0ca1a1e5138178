"""What the partition owner's authorization cache saves (authcache.py), measured in one
process: the real ``Sequencer`` and ``MongoStore`` against the embedded store, waves of
``in-flight`` sends to as many conversations, with the cache (the owner's path) and without
it (one authorizing read per batch), alternated round by round so that both see the same
machine: ``python -m bench.experiments.authcache_inprocess [in-flight] [waves] [rounds]``.

Prints this process's CPU microseconds per message (``time.process_time``: the sequencer,
the log, pymongo; not the store server's, given apart) for each variant, the median of the
rounds, and the store reads per batch as counted.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.system import cpu_seconds
from parley_contract.commands import ConversationCreate, MessageSend
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_contract.models import Conversation
from parley_conversation import domain
from parley_conversation.authcache import AuthCache
from parley_conversation.sequencer import Sequencer
from parley_conversation.store import MongoStore
from parley_devstack.servers import StoreServer


async def _nowhere(subject: str, payload: bytes) -> None:
    return None


async def measure(url: str, in_flight: int, waves: int, rounds: int, pid: int | None) -> Any:
    store = MongoStore(url, "bench_authcache", write_concern="journaled")
    await store.init()
    reads = 0
    read = store.get_conversations

    async def counted(ids: Sequence[str], *, with_totals: bool = True) -> dict[str, Conversation]:
        nonlocal reads
        reads += 1
        return await read(ids, with_totals=with_totals)

    store.get_conversations = counted  # type: ignore[method-assign]
    user = Principal(id="u-bench", kind=PrincipalKind.USER)
    cids = [f"c{i}" for i in range(in_flight)]
    for cid in cids:
        await store.insert_conversation(
            domain.new_conversation(user, ConversationCreate(conversation_id=cid))
        )
    variants = {
        "cached": Sequencer(store, _nowhere, auth=AuthCache(store.cached_next_seq, lambda _: True)),
        "read": Sequencer(store, _nowhere),
    }
    out: dict[str, dict[str, list[float]]] = {
        v: {"us": [], "store": [], "reads": []} for v in variants
    }
    k = 0
    for r in range(rounds + 1):
        for name, seq in variants.items() if r % 2 else reversed(variants.items()):
            reads0, cpu0 = reads, time.process_time()
            store0 = cpu_seconds(pid) if pid else 0.0
            for _ in range(waves):
                sends = []
                for cid in cids:
                    k += 1
                    cmd = MessageSend(conversation_id=cid, content=f"m{k}")
                    sends.append(seq.send(user, domain.new_message(user, cmd)))
                await asyncio.gather(*sends)
            await seq.settle_totals()
            n = waves * in_flight
            if r:  # the first round warms up
                out[name]["us"].append((time.process_time() - cpu0) * 1e6 / n)
                store_cpu = (cpu_seconds(pid) - store0) if pid else 0.0
                out[name]["store"].append(store_cpu * 1e6 / n)
                out[name]["reads"].append((reads - reads0) / waves)
    for seq in variants.values():
        await seq.drain()
    await store.close()
    return {
        name: {
            "cpuUsPerMessage": round(statistics.median(v["us"]), 1),
            "rounds": [round(x, 1) for x in v["us"]],
            "storeCpuUsPerMessage": round(statistics.median(v["store"]), 1),
            "readsPerBatch": round(statistics.mean(v["reads"]), 2),
        }
        for name, v in out.items()
    }


def main() -> None:
    in_flight = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    waves = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    with tempfile.TemporaryDirectory() as tmp:
        server = StoreServer(Path(tmp)).start()
        try:
            pid = server.process.proc.pid if server.process and server.process.proc else None
            started = time.perf_counter()
            result = asyncio.run(measure(server.url, in_flight, waves, rounds, pid))
        finally:
            server.stop()
    result["seconds"] = round(time.perf_counter() - started, 1)
    sys.stdout.write(f"{result}\n")


if __name__ == "__main__":
    main()
