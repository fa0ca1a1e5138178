"""What every result records about the machine it ran on."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total_mb() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "memMB": mem_total_mb(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "node": _cmd(["node", "--version"]),
        "gitCommit": _cmd(["git", "rev-parse", "--short", "HEAD"]),
        "gitDirty": bool(_cmd(["git", "status", "--porcelain", "--", "services", "libs"])),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "loadAvgAtStart": load_average(),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['nproc']} cores ({info['cpu']}), {info['memMB'] // 1024} GB RAM, "
        f"Python {info['python']}, Node {info['node']}, commit {info['gitCommit']}"
        f"{' (+local changes)' if info.get('gitDirty') else ''}, "
        f"load avg at start {info['loadAvgAtStart']}"
    )
