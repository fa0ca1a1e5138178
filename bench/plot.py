"""``bench/results/latency.png``: fan-out, persisted and scale-out latencies from the results
summary that bench/report.py writes. matplotlib is imported lazily (not a project dependency
yet): without it :func:`draw` runs ``python -m bench.plot`` under ``uv run --with``."""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PYDEPS = Path.home() / ".cache" / "parley-bench" / "pydeps"


def _offered(step: dict[str, Any]) -> float:
    return float(step["expectedDeliveries"]) / float(step["durationS"])


def plot(summary_path: Path, out: Path) -> None:
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    data: dict[str, Any] = json.loads(summary_path.read_text())
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    ax = axes[0]
    fan = data.get("fanout")
    if fan:
        steps = [s for s in fan["steps"] if s.get("median")] or fan["steps"]
        x = [_offered(s) for s in steps]
        for side, style in (("same", "-"), ("cross", "--")):
            for q, color in (("p50", "tab:blue"), ("p99", "tab:red")):
                ax.plot(
                    x,
                    [s["latencyMs"][side].get(q) for s in steps],
                    style,
                    color=color,
                    marker="o",
                    label=f"{side}-instance {q}",
                )
        ax.axhline(25, color="grey", lw=0.8, ls=":")
        ax.axhline(100, color="grey", lw=0.8, ls=":")
        ax.axvline(38_000, color="grey", lw=0.8, ls=":")
    ax.set_title("fan-out (typing:start, 10x20, 2 gateways)")
    ax.set_xlabel("offered deliveries/s (events/s x 19)")
    ax.set_ylabel("latency ms (log)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[1]
    per = data.get("persisted")
    if per:
        for r in per["runs"]:
            x = [s["ackedPerSecond"] for s in r["steps"]]
            k = r["conversationReplicas"]
            ax.plot(
                x,
                [s["latencyMs"]["ack"].get("p99") for s in r["steps"]],
                marker="o",
                label=f"ack p99, {k} replica(s)",
            )
            ax.plot(
                x,
                [s["latencyMs"]["all"].get("p99") for s in r["steps"]],
                marker="x",
                ls="--",
                label=f"message:new p99, {k} replica(s)",
            )
        ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_title("persisted (message:send)")
    ax.set_xlabel("acked messages/s")
    ax.set_ylabel("latency ms (log)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax = axes[2]
    sc = data.get("scaleout")
    if sc:
        for r in sc["runs"]:
            steps = r["steps"]
            line = ax.plot(
                [_offered(s) for s in steps],
                [s["latencyMs"]["all"].get("p99") for s in steps],
                marker="o",
                label=f"{r['gateways']} gateway(s) p99",
            )
            lost = [s for s in steps if s["deliveryRatio"] < 0.999]
            ax.scatter(
                [_offered(s) for s in lost],
                [s["latencyMs"]["all"].get("p99") for s in lost],
                s=120,
                facecolors="none",
                edgecolors=line[0].get_color(),
            )
        ax.axhline(100, color="grey", lw=0.8, ls=":")
    ax.set_title("scale-out (same fan-out; circled: ratio < 0.999)")
    ax.set_xlabel("offered deliveries/s")
    ax.set_ylabel("p99 latency ms (log)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def draw(summary_path: Path, out: Path, *, cwd: Path) -> None:
    """:func:`plot`, with matplotlib from the environment, else a private copy, else
    ``uv run --with matplotlib`` (it is not a project dependency yet)."""
    try:
        plot(summary_path, out)
        return
    except ImportError:
        pass
    if PYDEPS.is_dir():
        sys.path.append(str(PYDEPS))
        plot(summary_path, out)
        return
    uv = shutil.which("uv")
    if uv is None:
        logger.warning("matplotlib missing and no uv: no plot")
        return
    command = [uv, "run", "--no-project", "--with", "matplotlib", "python", "-m", "bench.plot"]
    subprocess.run(
        [*command, str(summary_path), str(out)],
        cwd=cwd,
        check=False,
    )


if __name__ == "__main__":
    plot(Path(sys.argv[1]), Path(sys.argv[2]))
