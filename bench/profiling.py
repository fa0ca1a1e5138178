"""Profiles of a gateway under load: py-spy (sampling, from outside the process) and
pyinstrument (the gateway restarted under it).

py-spy is not a project dependency: ``uv tool install py-spy`` (found on PATH or in
``~/.local/bin``). pyinstrument is looked for in the virtualenv, then in
``~/.cache/parley-bench/pyprof``
(``uv pip install --target ~/.cache/parley-bench/pyprof pyinstrument``), kept out of the
virtualenv so that ``uv sync`` leaves it alone.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PYPROF = Path.home() / ".cache" / "parley-bench" / "pyprof"


def py_spy_binary() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    local = Path.home() / ".local" / "bin" / "py-spy"
    return str(local) if local.exists() else None


def py_spy_argv(
    binary: str, pid: int, out: Path, duration: float, *, fmt: str, rate: int, gil: bool
) -> list[str]:
    """``py-spy record`` of ``pid``; ``gil``: only the samples holding the GIL (a process's
    CPU in Python, not its threads waiting for the GIL or for I/O: the embedded store runs a
    thread per connection)."""
    argv = [binary, "record", "--pid", str(pid), "--duration", str(int(duration))]
    argv += ["--rate", str(rate), "--format", fmt, "--function", "--nonblocking"]
    if gil:
        argv.append("--gil")
    return [*argv, "-o", str(out)]


class PySpy:
    """``py-spy record`` of one process for ``duration`` seconds (raw collapsed stacks or SVG)."""

    def __init__(
        self,
        pid: int,
        out: Path,
        duration: float,
        *,
        fmt: str = "raw",
        rate: int = 200,
        gil: bool = False,
    ) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("py-spy not found: uv tool install py-spy")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.duration = duration
        self.rate = rate
        self.log = out.with_suffix(".log").open("wb")
        self.proc = subprocess.Popen(
            py_spy_argv(binary, pid, out, duration, fmt=fmt, rate=rate, gil=gil),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait(self) -> None:
        try:
            self.proc.wait(timeout=self.duration + 30)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


def _frame_name(frame: str) -> str:
    # "on_msg (parley_gateway/hub.py:306)" -> "on_msg (parley_gateway/hub.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def summarize_collapsed(path: Path, duration: float, rate: int, top: int = 25) -> dict[str, Any]:
    """Top frames by self and by inclusive samples from py-spy's raw (collapsed) output."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"error": f"no profile at {path}"}
    for line in lines:
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [_frame_name(f) for f in stack.split(";")]
        # The first frame is the thread ("process 123:\"python\"" / "thread (0x...)"): skip it.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    expected = duration * rate
    return {
        "samples": total,
        "busyPercent": round(100 * total / expected, 1) if expected else None,
        "self": [
            {"frame": f, "percent": round(100 * c / total, 1)} for f, c in self_c.most_common(top)
        ]
        if total
        else [],
        "inclusive": [
            {"frame": f, "percent": round(100 * c / total, 1)} for f, c in incl.most_common(top)
        ]
        if total
        else [],
    }


def pyinstrument_argv(out: Path) -> tuple[list[str], dict[str, str]]:
    """argv and extra env to run ``python -m parley_gateway`` under pyinstrument."""
    env: dict[str, str] = {}
    try:
        import pyinstrument  # type: ignore[import-not-found,unused-ignore]  # noqa: F401, PLC0415
    except ImportError:
        if not PYPROF.is_dir():
            raise RuntimeError(
                f"pyinstrument not found: uv pip install --target {PYPROF} pyinstrument"
            ) from None
        env["PYTHONPATH"] = str(PYPROF)
    argv = [
        sys.executable,
        "-m",
        "pyinstrument",
        "-r",
        "text",
        "-o",
        str(out),
        "-m",
        "parley_gateway",
    ]
    return argv, env
