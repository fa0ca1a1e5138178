"""Drives the Node load generator (``bench/loadgen/loadgen.mjs``): JSON lines in and out.

One :class:`GeneratorPool` is one or more Node processes (each holds at most ``per_process``
sockets: a process may open no more files than RLIMIT_NOFILE), each with worker threads.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

LOADGEN_DIR = Path(__file__).resolve().parent / "loadgen"
LOADGEN = LOADGEN_DIR / "loadgen.mjs"


def ensure_node_modules() -> None:
    """``npm ci`` the generator's locked dependencies on a fresh clone."""
    if (LOADGEN_DIR / "node_modules" / "ws").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: the load generator needs Node >= 20 and npm")
    logger.info("installing the load generator's dependencies (npm ci)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=LOADGEN_DIR, check=True)


class GeneratorError(RuntimeError):
    pass


class Generator:
    """One Node process."""

    def __init__(self, threads: int, log_path: Path) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node not found: the load generator needs Node >= 20")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [node, str(LOADGEN), "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=LOADGEN_DIR,
        )
        self.threads = threads

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, cmd: dict[str, Any]) -> None:
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(cmd, separators=(",", ":")).encode() + b"\n")
        stdin.flush()

    def receive(self) -> dict[str, Any]:
        stdout: IO[bytes] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise GeneratorError(f"load generator exited (code {self.proc.poll()})")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise GeneratorError(str(out["error"]))
        return out

    def call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.send(cmd)
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"op": "close"})
                self.proc.wait(timeout=10)
            except (GeneratorError, OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@dataclass
class Client:
    url: str
    token: str
    gw: int  # index of the gateway it connects to
    user: str


class GeneratorPool:
    """Clients spread over as few Node processes as the file limit allows."""

    def __init__(
        self,
        clients: list[Client],
        *,
        threads: int,
        per_process: int,
        log_dir: Path,
        deflate: bool = True,  # offer permessage-deflate as browsers do; the server decides
    ) -> None:
        ensure_node_modules()
        n_proc = max(1, -(-len(clients) // per_process))
        self.clients = clients
        self.procs = [Generator(threads, log_dir / f"loadgen-{i + 1}.log") for i in range(n_proc)]
        size = -(-len(clients) // n_proc)
        self.blocks = [(i * size, min(len(clients), (i + 1) * size)) for i in range(n_proc)]
        for gen, (lo, hi) in zip(self.procs, self.blocks, strict=True):
            gen.send(
                {
                    "op": "init",
                    "deflate": deflate,
                    "clients": [
                        {"url": c.url, "token": c.token, "gw": c.gw} for c in clients[lo:hi]
                    ],
                }
            )
        for gen in self.procs:
            gen.receive()

    @property
    def pids(self) -> list[int]:
        return [g.pid for g in self.procs]

    def _locate(self, idx: int) -> tuple[int, int]:
        for p, (lo, hi) in enumerate(self.blocks):
            if lo <= idx < hi:
                return p, idx - lo
        raise IndexError(idx)

    def _all(self, cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for gen, cmd in zip(self.procs, cmds, strict=True):
            gen.send(cmd)
        return [gen.receive() for gen in self.procs]

    def connect(
        self, concurrency: int = 100, timeout_ms: int = 60_000, *, raw: bool = False
    ) -> dict[str, Any]:
        """Connect every client not yet open; ``raw``: the handshake on a bare TCP socket
        (loadgen ``raw.mjs`` ``rawConnectOne``), not the ws client (connects scenario)."""
        cmd = {"op": "connect", "concurrency": concurrency, "timeoutMs": timeout_ms, "raw": raw}
        parts = self._all([cmd] * len(self.procs))
        return _merge(parts)

    def resume(
        self,
        urls: list[str],
        *,
        concurrency: int,
        kill_time: float,
        timeout_ms: int = 60_000,
        raw: bool = True,
    ) -> dict[str, Any]:
        """Every client resumes its session at ``urls[i]`` at once; latency from ``kill_time``
        (``time.monotonic()``: CLOCK_MONOTONIC, the generator's clock too). ``raw``: on a bare
        socket (loadgen raw.mjs rawResumeOne), else through the Node ws client."""
        per: list[list[dict[str, Any]]] = [[] for _ in self.procs]
        for idx, url in enumerate(urls):
            p, local = self._locate(idx)
            per[p].append({"client": local, "url": url})
        parts = self._all(
            [
                {
                    "op": "resume",
                    "items": it,
                    "concurrency": concurrency,
                    "killMs": kill_time * 1000,
                    "timeoutMs": timeout_ms,
                    "raw": raw,
                }
                for it in per
            ]
        )
        return _merge(parts)

    def commands(
        self,
        items: list[tuple[int, str, dict[str, Any]]],
        concurrency: int = 50,
        timeout_ms: int = 60_000,
    ) -> dict[str, Any]:
        per: list[list[dict[str, Any]]] = [[] for _ in self.procs]
        for idx, event, data in items:
            p, local = self._locate(idx)
            per[p].append({"client": local, "event": event, "data": data})
        parts = self._all(
            [
                {"op": "commands", "items": it, "concurrency": concurrency, "timeoutMs": timeout_ms}
                for it in per
            ]
        )
        return _merge(parts)

    def load(self, job: dict[str, Any]) -> dict[str, Any]:
        if len(self.procs) != 1:
            raise GeneratorError("load phases run in one generator process")
        return self.procs[0].call({"op": "load", **job})

    def stats(self) -> dict[str, Any]:
        parts = self._all([{"op": "stats"}] * len(self.procs))
        codes: dict[str, int] = {}
        for p in parts:
            for k, v in p.get("closeCodes", {}).items():
                codes[k] = codes.get(k, 0) + v
        return {"open": sum(p["open"] for p in parts), "closeCodes": codes}

    def close(self) -> None:
        for gen in self.procs:
            gen.close()


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts add up; the wall time is the slowest process's; latency is the worst part's."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Any] = {"ok": 0, "failed": 0, "errors": {}, "extensions": {}}
    for p in parts:
        out["ok"] += p["ok"]
        out["failed"] += p["failed"]
        for key in ("errors", "extensions"):
            for k, v in p.get(key, {}).items():
                out[key][k] = out[key].get(k, 0) + v
    out["wallMs"] = max(p["wallMs"] for p in parts)
    out["perSecond"] = out["ok"] / (out["wallMs"] / 1000) if out["wallMs"] else 0.0
    out["latencyMs"] = max((p["latencyMs"] for p in parts), key=lambda lat: lat.get("p99", 0) or 0)
    out["latencyMsNote"] = "worst generator process"
    return out
