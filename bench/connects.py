"""Connect scenarios of issue 16: how fast one gateway accepts connections (``connects``) and
how fast the clients of a killed gateway are back on the others (``storm``).

``connects``: N distinct users (a JWT each) connect to ONE gateway, ``concurrency`` handshakes
in flight, until each got its ``connected`` frame; connects/s = N / wall time, plus the
gateway's CPU time per connect (from /proc). The clients then close and the next round starts
(``repeat``), so a round measures connects, not the memory of the ones before.

``storm``: N clients on gateway-1 of three, each joined to a conversation of ``members``;
gateway-1 is killed (SIGKILL) and every client resumes its session (``?session=``) on
gateway-2 or gateway-3 (alternately) at once. Measured from the kill: the time until every
client got ``reconnected`` and its conversation back (the ``conversation:joined`` of its
rejoin), and the time after which 50/90/99 % of them had.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.generator import GeneratorPool
from bench.profiling import PySpy, summarize_collapsed
from bench.scenarios import client_url, population, setup
from bench.system import System, cpu_seconds

logger = logging.getLogger(__name__)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (a gateway with PARLEY_GATEWAY_WORKERS)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return cpu_seconds(pid) + sum(cpu_seconds(int(c)) for c in children)


def connects(
    system: System,
    *,
    n: int,
    concurrency: int,
    repeat: int,
    threads: int,
    log_dir: Path,
    profile_dir: Path | None = None,
    client: str = "raw",
) -> dict[str, Any]:
    """Connections per second into gateway-1 (distinct users, nothing joined). ``client``:
    "raw" (a bare-socket handshake, the generator's CPU well below the gateway's) or "ws"
    (the Node ws client, as the fan-out scenarios use)."""
    pid = system.gateways[0].pid
    rounds: list[dict[str, Any]] = []
    for r in range(repeat):
        pop = population(system, f"conn{r}-{int(time.time())}", n, 1, [0])
        pool = GeneratorPool(pop.clients, threads=threads, per_process=50_000, log_dir=log_dir)
        spy = None
        try:
            time.sleep(1.0)
            if profile_dir is not None and pid and r == 0:
                # Shorter than the connects of a round (~3 s for 4,000 at 1,400/s): the
                # profile must not take in the clients' close and the gateway's cleanup.
                spy = PySpy(pid, profile_dir / "connects-gateway-1.txt", 2.0)
            # The generator and NATS share the 2 cores: their CPU per connect says whether
            # the gateway or the machine is the limit.
            others = {"generator": pool.pids, **{k: [v] for k, v in system.other_pids.items()}}
            other0 = {k: sum(cpu_seconds(p) for p in ps) for k, ps in others.items()}
            cpu0 = tree_cpu_seconds(pid) if pid else 0.0
            res = pool.connect(concurrency=concurrency, raw=client == "raw")
            cpu = (tree_cpu_seconds(pid) - cpu0) if pid else 0.0
            other = {k: sum(cpu_seconds(p) for p in ps) - other0[k] for k, ps in others.items()}
            stats = pool.stats()
        finally:
            pool.close()
        one = {
            "connections": n,
            "ok": res["ok"],
            "failed": res["failed"],
            "errors": res.get("errors", {}),
            "connectPerSecond": round(res["perSecond"], 1),
            "latencyMs": res["latencyMs"],
            "gatewayCpuMsPerConnect": round(1000 * cpu / max(1, res["ok"]), 3),
            "otherCpuMsPerConnect": {
                k: round(1000 * v / max(1, res["ok"]), 3) for k, v in other.items()
            },
            "open": stats["open"],
        }
        if spy is not None:
            spy.wait()
            one["profile"] = summarize_collapsed(spy.out, spy.duration, spy.rate)
            one["profile"]["file"] = spy.out.name
        logger.info(
            "connects: %d ok, %d failed, %.0f/s, p50 %.1f ms, gateway CPU %.3f ms/connect, "
            "others %s",
            one["ok"],
            one["failed"],
            one["connectPerSecond"],
            res["latencyMs"].get("p50", 0),
            one["gatewayCpuMsPerConnect"],
            one["otherCpuMsPerConnect"],
        )
        rounds.append(one)
        time.sleep(3.0)  # the gateway's cleanup of the closed round
    best = sorted(rounds, key=lambda x: x["connectPerSecond"])[len(rounds) // 2]
    return {"concurrency": concurrency, "client": client, "rounds": rounds, "median": best}


def storm(
    system: System,
    *,
    n: int,
    members: int,
    concurrency: int,
    threads: int,
    log_dir: Path,
    profile_dir: Path | None = None,
    profile_seconds: float = 10.0,
    client: str = "raw",
) -> dict[str, Any]:
    """Kill gateway-1 holding ``n`` joined clients; they resume on gateway-2 and -3.
    ``profile_dir``: py-spy both surviving gateways and conversation-1 from the kill on.
    The generator's CPU is counted too: it shares the machine's cores. ``client``: "raw"
    (the resume on a bare socket: the generator's CPU per client about half the ws
    client's) or "ws" (the Node ws client)."""
    pop = population(system, f"storm-{int(time.time())}", n // members, members, [0])
    pool = GeneratorPool(pop.clients, threads=threads, per_process=50_000, log_dir=log_dir)
    try:
        steps = setup(pool, pop, concurrency=50)
        time.sleep(1.0)  # the sessions' delivered seqs are flushed every 0.25 s
        targets = [client_url(system.gateways[1 + (i % 2)].ws_url) for i in range(len(pop.clients))]
        pid = system.gateways[0].pid
        assert pid is not None
        watched = _storm_processes(system)
        watched.update({f"generator-{i + 1}": p for i, p in enumerate(pool.pids)})
        spies: list[PySpy] = []
        if profile_dir is not None:
            for name in ("gateway-2", "gateway-3", "conversation-1"):
                if name in watched:
                    out_file = profile_dir / f"storm-{name}.txt"
                    spies.append(PySpy(watched[name], out_file, profile_seconds))
        cpu0 = {name: cpu_seconds(p) for name, p in watched.items()}
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        res = pool.resume(targets, concurrency=concurrency, kill_time=t_kill, raw=client == "raw")
        cpu = {name: round(cpu_seconds(p) - cpu0[name], 2) for name, p in watched.items()}
        batches = {
            g: _rejoin_batches(system.gateways[i].http_url)
            for i, g in ((1, "gateway-2"), (2, "gateway-3"))
        }
        stats = pool.stats()
        for spy in spies:
            spy.wait()
    finally:
        pool.close()
    out = {
        "clients": len(pop.clients),
        "members": members,
        "client": client,
        "setup": {k: {"ok": v["ok"], "failed": v["failed"]} for k, v in steps.items()},
        "resumed": res["ok"],
        "failed": res["failed"],
        "errors": res.get("errors", {}),
        "allBackSeconds": round(res["wallMs"] / 1000, 3),
        "backAfterMs": res["latencyMs"],
        # When the hellos came (`reconnected`) against when each was back (its rejoin's
        # `conversation:joined`), and both per 0.5 s after the kill.
        "reconnectedAfterMs": res.get("reconnectedMs", {}),
        "timeline": res.get("timeline", {}),
        "open": stats["open"],
        # CPU seconds each process spent from the kill until the last client was back.
        "cpuSeconds": cpu,
        # Batched rejoin requests each surviving gateway sent, and the principals in them.
        "rejoinBatches": batches,
    }
    if spies:
        out["profiles"] = {
            spy.out.name: summarize_collapsed(spy.out, spy.duration, spy.rate) for spy in spies
        }
    logger.info(
        "storm: %d of %d resumed in %.2f s (p50 %.0f ms, p99 %.0f ms after the kill), CPU s %s",
        out["resumed"],
        out["clients"],
        out["allBackSeconds"],
        res["latencyMs"].get("p50", 0),
        res["latencyMs"].get("p99", 0),
        cpu,
    )
    return out


def _rejoin_batches(http_url: str) -> dict[str, float]:
    """A gateway's batched rejoin requests so far: how many, and principals per request."""
    try:
        with urllib.request.urlopen(f"{http_url}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (f"{_BATCH}_count", f"{_BATCH}_sum"):
            values[name.rsplit("_", 1)[1]] = float(value)
    count = values.get("count", 0.0)
    return {
        "requests": count,
        "principalsPerRequest": round(values.get("sum", 0.0) / count, 2) if count else 0.0,
    }


_BATCH = "parley_gateway_rejoin_batch_principals"


def _storm_processes(system: System) -> dict[str, int]:
    """The processes a storm keeps busy (the surviving gateways, the conversation replicas,
    NATS, the store), by name, for their CPU time."""
    out = {f"gateway-{i + 1}": g.pid for i, g in enumerate(system.gateways) if i and g.pid}
    out.update({f"conversation-{i + 1}": p for i, p in enumerate(system.conversation_pids)})
    out.update(system.other_pids)
    return out
