"""One measured load step of the fan-out and persisted scenarios (scenarios.py), and how a
step is judged: the median of repeats at one rate, "sustainable" (p99 and delivery ratio)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from bench.generator import GeneratorPool
from bench.system import System, cpu_seconds

if TYPE_CHECKING:
    from bench.scenarios import Population

logger = logging.getLogger(__name__)

# A p99 under this is "keeps up" when searching the highest sustainable rate.
P99_LIMIT_MS = 100.0
MIN_RATIO = 0.999


def _cpu(pids: dict[str, int | None]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items() if pid}


def _watched_pids(
    system: System, gateways: list[int], pool: GeneratorPool
) -> dict[str, int | None]:
    pids: dict[str, int | None] = {f"gateway-{g + 1}": system.gateways[g].pid for g in gateways}
    for i, pid in enumerate(system.conversation_pids):
        pids[f"conversation-{i + 1}"] = pid
    pids.update(system.other_pids)
    for i, pid in enumerate(pool.pids):
        pids[f"loadgen-{i + 1}"] = pid
    return pids


def load_step(
    system: System,
    pool: GeneratorPool,
    pop: Population,
    gateways: list[int],
    *,
    kind: str,
    rate: float,
    duration: float,
    drain: float,
    members: int,
    content_bytes: int = 64,
) -> dict[str, Any]:
    """One load step: ``rate`` events (or messages) per second in total for ``duration``
    seconds from each conversation's sender, then ``drain``; the generator's figures plus the
    delivery ratio and rates, and the CPU of every watched process (gateways, replicas, the
    store and NATS, the generators) over the step."""
    pids = _watched_pids(system, gateways, pool)
    cpu0 = _cpu(pids)
    t0 = time.monotonic()
    res = pool.load(
        {
            "kind": kind,
            "convs": [
                {"conv": c["conv"], "sender": c["sender"], "senderGw": c["senderGw"]}
                for c in pop.convs
            ],
            "ratePerSender": rate / len(pop.convs),
            "durationMs": int(duration * 1000),
            "drainMs": int(drain * 1000),
            "contentBytes": content_bytes,
        }
    )
    wall = time.monotonic() - t0
    cpu1 = _cpu(pids)
    res["cpuPercent"] = {
        name: round((cpu1[name] - cpu0.get(name, 0.0)) / wall * 100, 1) for name in cpu1
    }
    res["rate"] = rate
    res["durationS"] = duration
    # Persisted: every stored message (acked, or stored with its ack lost) must reach everyone.
    basis = max(res["acked"], res["messagesSeen"]) if kind == "message" else res["sent"]
    expected = basis * (members - 1)
    res["expectedDeliveries"] = expected
    res["deliveryRatio"] = round(res["delivered"] / expected, 5) if expected else 0.0
    res["deliveriesPerSecond"] = round(res["delivered"] / duration, 1)
    res["sentPerSecond"] = round(res["sent"] / duration, 1)
    if kind == "message":
        res["ackedPerSecond"] = round(res["acked"] / duration, 1)
    lat = res["latencyMs"]
    logger.info(
        "%s %6.0f/s: sent %d, delivered %d (ratio %.4f, %.0f/s), p50/p99/max same %s/%s/%s "
        "cross %s/%s/%s ms%s, cpu %s, generator loop lag p99/max %.0f/%.0f ms",
        kind,
        rate,
        res["sent"],
        res["delivered"],
        res["deliveryRatio"],
        res["deliveriesPerSecond"],
        lat["same"].get("p50"),
        lat["same"].get("p99"),
        lat["same"].get("max"),
        lat["cross"].get("p50"),
        lat["cross"].get("p99"),
        lat["cross"].get("max"),
        (
            f", acked {res['acked']} ack p50/p99 {lat['ack'].get('p50')}/{lat['ack'].get('p99')}"
            f" ms gaps {res['seqGaps']}"
            if kind == "message"
            else ""
        ),
        res["cpuPercent"],
        res["generator"]["loopLagP99Ms"],
        res["generator"]["loopLagMaxMs"],
    )
    return res


def median_step(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of one rate whose overall p99 is the median of the repeats."""
    ranked = sorted(steps, key=lambda s: s["latencyMs"]["all"].get("p99") or float("inf"))
    return ranked[(len(ranked) - 1) // 2]


def sustainable(step: dict[str, Any]) -> bool:
    p99 = step["latencyMs"]["all"].get("p99")
    return p99 is not None and p99 <= P99_LIMIT_MS and step["deliveryRatio"] >= MIN_RATIO
