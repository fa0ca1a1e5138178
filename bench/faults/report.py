"""The fault suite's table (Markdown, as in docs/reliability.md) and its JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"

COLUMNS = [
    ("scenario", "scenario"),
    ("acked", "acked"),
    ("stored", "stored"),
    ("lost", "lost"),
    ("seq_reused", "seq reused"),
    ("stored_twice", "stored 2x"),
    ("store_gaps", "seq holes"),
    ("undelivered", "undelivered"),
    ("duplicates", "dup. deliveries"),
    ("seq_conflicts", "seq conflicts"),
    ("reorders", "reordered"),
    ("gaps_seen", "gaps seen"),
    ("unacked", "never acked"),
    ("max_wait_s", "max wait s"),
    ("recovery_s", "recovery s"),
    ("agent", "agent turn"),
    ("ok", "result"),
]


def _agent_cell(agent: dict[str, Any] | None) -> str:
    if not agent:
        return ""
    answered = agent.get("answered_s")
    parts = [f"answered {answered} s" if answered is not None else "no answer"]
    if agent.get("failure_visible_s") is not None:
        parts.append(f"failure visible {agent['failure_visible_s']} s")
    parts.append(f"steps {agent.get('steps')}")
    if agent.get("streams_not_ended"):
        parts.append(
            f"stream-start {agent.get('stream_starts')}, stream-end {agent.get('stream_ends')}"
        )
    return ", ".join(parts)


def cell(key: str, result: dict[str, Any]) -> str:
    if key == "agent":
        return _agent_cell(result.get("agent"))
    if key == "ok":
        return "pass" if result.get("ok") else "FAIL"
    value = result.get(key)
    return "-" if value is None else str(value)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(label for _, label in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for result in results:
        lines.append("| " + " | ".join(cell(key, result) for key, _ in COLUMNS) + " |")
    failing = [r for r in results if not r.get("ok")]
    if failing:
        lines.append("")
        for r in failing:
            lines.append(f"- **{r['scenario']}** fails: {'; '.join(r.get('why', []))}")
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=RESULTS.parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def write_json(
    results: list[dict[str, Any]], settings: dict[str, Any], path: Path | None = None
) -> Path:
    now = datetime.now(UTC)
    doc = {
        "suite": "faults",
        "finished": now.isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": settings,
        "ok": all(r.get("ok") for r in results),
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = path or RESULTS / "faults-latest.json"
    target.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    stamped = RESULTS / f"{now.strftime('%Y%m%dT%H%M%SZ')}-faults.json"
    if path is None:
        stamped.write_text(target.read_text())
    return target
