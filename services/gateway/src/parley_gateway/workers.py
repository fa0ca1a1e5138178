"""``PARLEY_GATEWAY_WORKERS=N``: one gateway port served by N processes (``SO_REUSEPORT``).

A connect costs about half a millisecond of one core, nearly all of it Python in one event
loop (docs/benchmarks.md, "Connects per second"): one process accepts ~2,000 connects/s at
best. With N workers the kernel spreads new connections over N listening sockets on the
same port, one per process, so connects (and everything else) use N cores.

Each worker is a whole gateway instance: ``python -m parley_gateway`` with
``PARLEY_GATEWAY_WORKER=i`` and the instance id ``<instance id>-<i>``, its own NATS
connection, presence entries, heartbeat and sessions, as if it were a separate replica — so
nothing new is shared between processes: a client that reconnects to another worker resumes
its session as it would on another instance, and ``/v1/scaling`` counts every worker (it
reads the instances bucket). What is per worker: ``/metrics`` and ``/readyz`` answer for the
worker that accepted the request (scrape each worker through the instances bucket's
addresses, or run one worker per pod to keep one scrape target per process).

This parent process only supervises: SIGTERM/SIGINT are passed on to every worker (each
drains its own clients); it exits with the first non-zero exit code, or 0. A worker that
exits while nobody asked it to stops the others and the parent (the orchestrator restarts
the whole, as it would a single process). The parent checks the configuration first (exit
2 for one that must not run, before any worker starts).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from parley_gateway.settings import Settings
from parley_runtime.logs import setup_logging
from parley_runtime.runner import EXIT_REFUSED, SHUTDOWN_MARGIN_SECONDS

logger = logging.getLogger(__name__)

WORKER_ENV = "PARLEY_GATEWAY_WORKER"


def supervise(settings: Settings) -> int:
    """Start ``settings.workers`` worker processes and wait for them; the exit code."""
    setup_logging(settings)
    try:
        settings.check()
    except ValueError as exc:
        logger.error("refusing to start: %s", exc)
        return EXIT_REFUSED
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(1, settings.workers + 1):
        env = {
            **os.environ,
            WORKER_ENV: str(i),
            "PARLEY_INSTANCE_ID": f"{settings.instance_id}-{i}",
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "parley_gateway"], env=env))
    logger.info(
        "gateway %s: %d workers on port %d (pids %s)",
        settings.instance_id,
        len(procs),
        settings.port,
        ", ".join(str(p.pid) for p in procs),
    )
    stop_deadline: list[float] = []

    def stop(signum: int, _frame: FrameType | None = None) -> None:
        if not stop_deadline:
            stop_deadline.append(
                time.monotonic() + settings.drain_seconds + SHUTDOWN_MARGIN_SECONDS + 5
            )
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while any(proc.poll() is None for proc in procs):
        for proc in procs:
            rc = proc.poll()
            if rc is not None and rc != 0 and code == 0:
                code = rc
            if rc is not None and not stop_deadline:
                logger.error("worker pid %d exited (%d): stopping the others", proc.pid, rc)
                code = code or 1
                stop(signal.SIGTERM)
        if stop_deadline and time.monotonic() > stop_deadline[0]:
            for proc in procs:
                if proc.poll() is None:
                    logger.error("worker pid %d did not stop: killed", proc.pid)
                    proc.kill()
            code = code or 1
        time.sleep(0.1)
    for proc in procs:
        rc = proc.returncode
        if rc and not code:
            code = rc
    return code
