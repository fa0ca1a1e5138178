"""Tables and the plot from ``bench/results/*.json``: ``latest.md``, ``latency.png`` (drawn by
bench/plot.py) and the table block of ``bench/README.md``. Standard library only."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bench import plot

logger = logging.getLogger(__name__)

BASELINE = (
    "Baseline (the design this replaces, Socket.IO v4 + Redis adapter, 2 Node processes on a "
    "machine like this): ~15 KB RSS per idle connection, ~38k deliveries/s, cross-instance "
    "p99 26-59 ms."
)
README_START = "<!-- bench:latest:start -->"
README_END = "<!-- bench:latest:end -->"


def latest_results(results: Path) -> dict[str, dict[str, Any]]:
    """The newest full run of each scenario (a quick run only if there is no full one)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        name = doc.get("scenario")
        if not isinstance(name, str):
            continue
        doc["_file"] = path.name
        prev = out.get(name)
        if prev is None or (prev.get("quick") or not doc.get("quick")):
            out[name] = doc
    return out


def _f(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _lat(lat: dict[str, Any], key: str = "p99") -> Any:
    return lat.get(key) if lat and lat.get("count") else None


def targets(docs: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, source) rows."""
    rows: list[tuple[str, str, str, str]] = []
    idle = docs.get("idle")
    if idle:
        stages = idle["result"]["stages"]
        near = min(stages, key=lambda s: abs(s["connections"] - 10_000)) if stages else None
        if near:
            kb = near["rssPerConnKB"]
            rows.append(
                (
                    "idle: <= 15 KB RSS/connection at 10k connections, one gateway",
                    f"{kb:.2f} KB/conn at {near['open']:,} open",
                    "met" if kb <= 15 and near["connections"] >= 10_000 else "missed",
                    idle["_file"],
                )
            )
        hold = idle["result"].get("hold", {})
        top = max((s["connections"] for s in stages), default=0)
        rows.append(
            (
                "idle: 20k connections held by one gateway process",
                f"{hold.get('open', 0):,} of {top:,} held {hold.get('seconds', 0):.0f}s "
                f"({hold.get('rssPerConnKB', 0):.2f} KB/conn)",
                "met"
                if hold.get("open", 0) >= 20_000
                else (
                    "limit: RLIMIT_NOFILE hard 20000"
                    if top >= 19_800 and hold.get("open") == top
                    else "missed"
                ),
                idle["_file"],
            )
        )
    fan = docs.get("fanout")
    if fan:
        res = fan["result"]
        at = [s for s in res["steps"] if abs(s["rate"] - 2000) < 1]
        at = [s for s in at if s.get("median")] or at
        if at:
            s = at[0]
            cross = _lat(s["latencyMs"]["cross"])
            ok = s["deliveryRatio"] >= 0.99995 and cross is not None and cross <= 25
            rows.append(
                (
                    "fan-out 2,000 ev/s into 10x20 (~38k deliveries/s): "
                    "ratio 1.0, cross p99 <= 25 ms",
                    f"{s['deliveriesPerSecond']:,.0f} deliveries/s, "
                    f"ratio {s['deliveryRatio']:.5f}, cross p99 {_f(cross)} ms"
                    + (f" (median of {res['repeat']} runs)" if res.get("repeat", 1) > 1 else ""),
                    "met" if ok else "missed",
                    fan["_file"],
                )
            )
        best = res["maxSustainedDeliveriesPerSecond"]
        rows.append(
            (
                "fan-out: highest rate with p99 <= 100 ms >= 90k deliveries/s, 2 gateways",
                f"{best:,.0f} deliveries/s (at {res['maxSustainedRate']:,.0f} ev/s)",
                "met" if best >= 90_000 else "missed",
                fan["_file"],
            )
        )
    per = docs.get("persisted")
    if per:
        runs = per["result"]["runs"]
        best_run = max(runs, key=lambda r: r["maxAckedPerSecondAtP99Le50"]) if runs else None
        if best_run:
            gaps = sum(r["seqGaps"] for r in runs)
            v = best_run["maxAckedPerSecondAtP99Le50"]
            # Highest offered rate whose every send was acked, over all replica counts.
            all_acked = max(
                (
                    float(s["ackedPerSecond"])
                    for r in runs
                    for s in r["steps"]
                    if s.get("acked") == s.get("sent") and "ackedPerSecond" in s
                ),
                default=0.0,
            )
            rows.append(
                (
                    "persisted: >= 2,000 acked message:send/s, ack p99 <= 50 ms, 0 seq gaps",
                    f"{v:,.0f} acked/s with ack p99 <= 50 ms; {all_acked:,.0f}/s with every "
                    f"send acked; peak {max(r['maxAckedPerSecond'] for r in runs):,.0f} "
                    f"acked/s (replicas "
                    f"{', '.join(str(r['conversationReplicas']) for r in runs)}); "
                    f"seq gaps {gaps}",
                    "met" if v >= 2000 and gaps == 0 else "missed",
                    per["_file"],
                )
            )
    return rows


def fanout_table(steps: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| events/s | deliveries/s | ratio | same p50 / p90 / p99 / max ms "
        "| cross p50 / p90 / p99 / max ms | gateway CPU % | generator CPU % |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        lat = s["latencyMs"]
        gw = ", ".join(f"{v:.0f}" for k, v in s["cpuPercent"].items() if k.startswith("gateway"))
        gen = sum(v for k, v in s["cpuPercent"].items() if k.startswith("loadgen"))
        mark = "**" if s.get("median") and len(steps) > len({x["rate"] for x in steps}) else ""
        lines.append(
            f"| {mark}{s['rate']:,.0f}{mark} | {s['deliveriesPerSecond']:,.0f} | "
            f"{s['deliveryRatio']:.4f} | "
            + " / ".join(_f(_lat(lat["same"], k)) for k in ("p50", "p90", "p99", "max"))
            + " | "
            + " / ".join(_f(_lat(lat["cross"], k)) for k in ("p50", "p90", "p99", "max"))
            + f" | {gw} | {gen:.0f} |"
        )
    return lines


def persisted_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| replicas / group commit | sent/s | acked/s | ack p50 / p99 / max ms "
        "| message:new p50 / p99 ms | delivery ratio | seq gaps | failed acks "
        "| CPU % (conv, gw, store) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for s in r["steps"]:
            lat = s["latencyMs"]
            failed = sum(s["ackFailed"].values()) + s["lostAcks"]
            cpu = s["cpuPercent"]
            conv = sum(v for k, v in cpu.items() if k.startswith("conversation"))
            gw = sum(v for k, v in cpu.items() if k.startswith("gateway"))
            lines.append(
                f"| {r.get('groupCommit') or r['conversationReplicas']} | "
                f"{s['sentPerSecond']:,.0f} | "
                f"{s['ackedPerSecond']:,.0f} | "
                + " / ".join(_f(_lat(lat["ack"], k)) for k in ("p50", "p99", "max"))
                + " | "
                + " / ".join(_f(_lat(lat["all"], k)) for k in ("p50", "p99"))
                + f" | {s['deliveryRatio']:.4f} | {s['seqGaps'] + s['seqTailMissing']} | "
                f"{failed} | {conv:.0f}, {gw:.0f}, {cpu.get('store', 0):.0f} |"
            )
    return lines


def render(docs: dict[str, dict[str, Any]]) -> str:
    out: list[str] = []
    any_doc = next(iter(docs.values()), None)
    if any_doc is None:
        return "No results yet: run `make bench`.\n"
    m = any_doc["machine"]
    out.append(
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memMB'] // 1024} GB RAM, "
        f"Python {m['python']}, Node {m['node']}; generator on the same box, loopback only."
    )
    out.append("")
    out.append(BASELINE)
    out.append("")
    out.append("| target | measured | verdict | result file |")
    out.append("|---|---|---|---|")
    for t, meas, verdict, src in targets(docs):
        out.append(f"| {t} | {meas} | **{verdict}** | `{src}` |")
    out.append("")
    for name, doc in docs.items():
        m = doc["machine"]
        out.append(f"### {name}{' (quick run)' if doc.get('quick') else ''}: `{doc['_file']}`")
        out.append("")
        out.append(
            f"{doc['startedAt']}, commit {m['gitCommit']}"
            f"{' +local changes' if m.get('gitDirty') else ''}, "
            f"load average at start {m['loadAvgAtStart']}, at end {doc.get('loadAvgAtEnd')}"
            + (f"; note: {doc['label']}" if doc.get("label") else "")
        )
        out.append("")
        res = doc["result"]
        if name == "idle":
            out.append(
                "| connections | open | connect/s | connect p99 ms | join/s "
                "| gateway RSS MB | KB per connection |"
            )
            out.append("|---|---|---|---|---|---|---|")
            for s in res["stages"]:
                out.append(
                    f"| {s['connections']:,} | {s['open']:,} | {s['connectPerSecond']:,.0f} | "
                    f"{_f(s['connectLatencyMs'].get('p99'))} | {s['joinPerSecond']:,.0f} | "
                    f"{s['rssKB'] / 1024:,.1f} | {s['rssPerConnKB']:.2f} |"
                )
            h = res.get("hold", {})
            out.append("")
            out.append(
                f"Baseline RSS {res['baselineRssKB'] / 1024:.1f} MB; after a "
                f"{h.get('seconds', 0):.0f} s hold {h.get('open', 0):,} connections open, "
                f"{h.get('rssPerConnKB', 0):.2f} KB/connection."
            )
        elif name in ("fanout", "selfcheck"):
            out.append(
                f"{res['conversations']} conversations x {res['members']} members over "
                f"{res['gateways']} gateways, one typing:start sender per conversation."
            )
            out.append("")
            out += fanout_table(res["steps"])
        elif name in ("persisted", "groupcommit"):
            if name == "groupcommit":
                out.append(
                    "1 conversation replica; `default` = group commit "
                    "(`PARLEY_CONVERSATION_MAX_BATCH=500`), `max_batch_1` = one write per batch."
                )
                out.append("")
            out += persisted_table(res["runs"])
        elif name == "connects":
            out.append(f"One gateway, {res['concurrency']} handshakes in flight.")
            out.append("")
            out.append("| connections | ok | connects/s | p50 / p99 ms | gateway CPU ms/connect |")
            out.append("|---|---|---|---|---|")
            for r in res["rounds"]:
                lat = r["latencyMs"]
                out.append(
                    f"| {r['connections']:,} | {r['ok']:,} | {r['connectPerSecond']:,.0f} | "
                    f"{_f(lat.get('p50'))} / {_f(lat.get('p99'))} | "
                    f"{r['gatewayCpuMsPerConnect']:.3f} |"
                )
        elif name == "storm":
            lat = res["backAfterMs"]
            out.append(
                f"{res['clients']:,} clients of a killed gateway: {res['resumed']:,} resumed on "
                f"two others, the last {res['allBackSeconds']:.2f} s after the kill (p50 "
                f"{_f(lat.get('p50'))} ms, p99 {_f(lat.get('p99'))} ms); failed "
                f"{res['failed']:,} {res.get('errors') or ''}"
            )
            if res.get("cpuSeconds"):
                cpu = ", ".join(f"{k} {v:.2f}" for k, v in res["cpuSeconds"].items())
                out.append(f"\nCPU seconds from the kill until the last one was back: {cpu}")
        elif name == "scaleout":
            out.append(
                "| gateways | highest deliveries/s with p99 <= 100 ms, ratio >= 0.999 "
                "| at events/s |"
            )
            out.append("|---|---|---|")
            for r in res["runs"]:
                out.append(
                    f"| {r['gateways']} | {r['maxSustainedDeliveriesPerSecond']:,.0f} | "
                    f"{r['maxSustainedRate']:,.0f} |"
                )
            for r in res["runs"]:
                out.append("")
                out.append(f"{r['gateways']} gateway(s):")
                out.append("")
                out += fanout_table(r["steps"])
        out.append("")
    return "\n".join(out)


def write_latest(results: Path) -> None:
    docs = latest_results(results)
    text = render(docs)
    (results / "latest.md").write_text("# Latest benchmark results\n\n" + text + "\n")
    # The project README shows the targets table only; the bench docs show everything.
    targets = text.split("\n### ", 1)[0].strip()
    links = (
        "Full tables: [bench/results/latest.md](bench/results/latest.md); plot:\n"
        "[bench/results/latency.png](bench/results/latency.png)."
    )
    for doc, block in (
        (results.parent / "README.md", text),
        (results.parent.parent / "docs" / "benchmarks.md", text),
        (results.parent.parent / "README.md", f"{targets}\n\n{links}"),
    ):
        if doc.exists():
            body = doc.read_text()
            if README_START in body and README_END in body:
                head, rest = body.split(README_START, 1)
                _, tail = rest.split(README_END, 1)
                doc.write_text(f"{head}{README_START}\n{block}\n{README_END}{tail}")
    summary = results / "raw" / "plot-input.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({k: v["result"] for k, v in docs.items()}))
    out = results / "latency.png"
    plot.draw(summary, out, cwd=results.parent.parent)
    logger.info("wrote %s and %s", results / "latest.md", out)
