"""The system under test: a Stack started for the run, or gateways already running."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from parley_contract.partitions import PARTITIONS
from parley_devstack.servers import free_port
from parley_devstack.stack import Stack, StackConfig

logger = logging.getLogger(__name__)


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit, for this process and its children."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    for want in (max(target, 1_048_576), target):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kb(pid: int) -> int:
    """VmRSS of a process and its descendants, in KB (0 if it is gone)."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def open_fds(pid: int | None) -> int | None:
    """How many file descriptors a process holds (None if unknown)."""
    if not pid:
        return None
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def nofile_limit(pid: int | None) -> str | None:
    """The process's 'Max open files' line from /proc/<pid>/limits."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    except OSError:
        return None
    return None


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out: list[int] = []
    for c in children:
        out += [int(c), *_descendants(int(c))]
    return out


def find_gateway_pid(port: int) -> int | None:
    """The pid of a running ``python -m parley_gateway`` serving ``port`` (via its environ)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if b"parley_gateway" not in cmdline:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PARLEY_GATEWAY_PORT={port}".encode() in environ:
            return int(entry.name)
    return None


@dataclass
class Gateway:
    ws_url: str
    http_url: str
    pid: int | None


# The samples of a replica's /metrics a persisted step reports per replica (their deltas):
# collisions, group-commit batches (count and summed size), requests by operation and
# outcome, partition moves, the owner's authorization cache (hits: no store read).
REPLICA_METRICS = (
    "parley_conversation_seq_collisions_total",
    "parley_conversation_auth_cache_hits_total",
    "parley_conversation_auth_cache_misses_total",
    "parley_conversation_batch_size_count",
    "parley_conversation_batch_size_sum",
    "parley_conversation_requests_total",
    "parley_conversation_partition_moves_total",
    "parley_conversation_owned_partitions",
)


@dataclass
class System:
    gateways: list[Gateway]
    conversation_pids: list[int] = field(default_factory=list)
    other_pids: dict[str, int] = field(default_factory=dict)
    stack: Stack | None = None
    description: str = ""

    def rss_kb(self, gateway_index: int) -> int | None:
        pid = self.gateways[gateway_index].pid
        return rss_kb(pid) if pid else None

    def seq_collisions(self) -> float | None:
        """``parley_conversation_seq_collisions_total`` summed over the running conversation
        replicas (docs/affinity.md); None when they are not ours or not answering."""
        per = self.replica_metrics()
        if per is None:
            return None
        return sum(m.get("parley_conversation_seq_collisions_total", 0.0) for m in per)

    def replica_metrics(self) -> list[dict[str, float]] | None:
        """Each running conversation replica's ``/metrics`` samples (name with labels →
        value) of the counters a persisted step reports per replica (REPLICA_METRICS); None
        when the replicas are not ours or one does not answer."""
        if self.stack is None:
            return None
        out: list[dict[str, float]] = []
        for svc in self.stack.conversation[: len(self.conversation_pids)]:
            try:
                with urllib.request.urlopen(f"{svc.base_url}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                return None
            samples: dict[str, float] = {}
            for line in text.splitlines():
                if line.startswith(REPLICA_METRICS):
                    name, _, value = line.rpartition(" ")
                    samples[name] = float(value)
            out.append(samples)
        return out

    def wait_partitions_settled(self, timeout: float = 30.0) -> bool:
        """Wait until the running replicas own every partition between them, in shares
        that differ by one at most (docs/affinity.md): a step that starts while partitions
        still move measures a hand-off, not the replicas. False if not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            per = self.replica_metrics()
            if per is None:
                return False
            owned = [int(m.get("parley_conversation_owned_partitions", 0)) for m in per]
            if owned and sum(owned) == PARTITIONS and max(owned) - min(owned) <= 1:
                return True
            time.sleep(0.5)
        logger.warning("partitions not settled after %.0f s", timeout)
        return False

    def stop_conversation_replica(self, index: int) -> None:
        if self.stack is None:
            raise RuntimeError("cannot change replicas of a stack we did not start")
        self.stack.conversation[index].process.stop()


# Overrides for the bench: one sender per conversation sends hundreds of events/s, far above
# the per-connection command rate limit meant for people (20/s).
BENCH_GATEWAY_ENV = {
    "PARLEY_GATEWAY_COMMANDS_PER_SECOND": "1000000",
    "PARLEY_GATEWAY_MAX_CONVERSATIONS": "1000",
}


@contextlib.contextmanager
def started_stack(
    workdir: Path,
    *,
    gateways: int,
    conversation_replicas: int,
    log_level: str = "WARNING",
    extra_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[System]:
    service_env: dict[str, dict[str, str]] = {"gateway": dict(BENCH_GATEWAY_ENV)}
    for kind, env in (extra_env or {}).items():
        service_env.setdefault(kind, {}).update(env)
    config = StackConfig(
        workdir=workdir,
        gateway_ports=[free_port() for _ in range(gateways)],
        conversation_replicas=conversation_replicas,
        agent_bridges=0,
        log_level=log_level,
        service_env=service_env,
        database=f"bench_{os.getpid()}",
    )
    stack = Stack(config)
    logger.info(
        "starting the stack: %d gateway(s), %d conversation replica(s)",
        gateways,
        conversation_replicas,
    )
    stack.start()
    try:
        gws = []
        for i, svc in enumerate(stack.gateways):
            proc = svc.process.proc
            gws.append(Gateway(stack.ws_url(i), stack.gateway_url(i), proc.pid if proc else None))
        conv = [s.process.proc.pid for s in stack.conversation if s.process.proc]
        other: dict[str, int] = {}
        for name, server in (("nats", stack.nats), ("store", stack.store)):
            mp = server.process if server is not None else None
            if mp is not None and mp.proc is not None:
                other[name] = mp.proc.pid
        yield System(gws, conv, other, stack, stack.describe())
    finally:
        stack.stop()


def external_system(urls: list[str]) -> System:
    """Gateways already running (``make run``); RSS is found through /proc when possible."""
    gws = []
    for url in urls:
        parsed = urlparse(url)
        scheme = "wss" if parsed.scheme in ("https", "wss") else "ws"
        http_scheme = "https" if scheme == "wss" else "http"
        host = parsed.netloc
        pid = find_gateway_pid(parsed.port) if parsed.port else None
        gws.append(Gateway(f"{scheme}://{host}/ws", f"{http_scheme}://{host}", pid))
    return System(gws, description="external: " + ", ".join(urls))
