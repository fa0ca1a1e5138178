"""Keep a set of local processes running, as docker compose (``restart: always``) and
Kubernetes (``restartPolicy: Always``) do: a process that exits is started again after a
capped exponential backoff, and every exit and restart is logged.

Used by ``make run`` (``parley run`` supervises its whole stack) and reusable by anything
that runs :class:`~parley_devstack.servers.ManagedProcess` es, e.g. a fault suite that
kill -9s processes and measures how long the system takes to recover::

    sup = Supervisor(Backoff(initial=0.5, maximum=30)).start()
    sup.watch(gateway.process)
    ...
    with sup.paused(gateway.process):   # an intended stop/restart: not a crash
        gateway.process.stop()
    sup.stop()                          # stop watching (the processes keep running)

Backoff: the n-th consecutive restart waits ``initial * factor**(n-1)``, at most ``maximum``
seconds (CrashLoopBackOff: 10 s doubling to 5 min in Kubernetes; shorter here, for a
developer's machine). A process that stayed up ``stable_after`` seconds starts again from
``initial``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from parley_devstack.servers import ManagedProcess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0

    def delay(self, restarts: int) -> float:
        """Seconds to wait before the ``restarts``-th consecutive restart (1, 2, ...)."""
        return float(min(self.maximum, self.initial * self.factor ** max(0, restarts - 1)))


@dataclass
class Watched:
    """One supervised process and its restart bookkeeping."""

    process: ManagedProcess
    consecutive: int = 0  # restarts since the process last stayed up stable_after seconds
    restarts: int = 0  # restarts in total
    restart_at: float | None = None  # when it is due (monotonic), once it was seen dead
    paused: int = 0
    last_exit: int | None = field(default=None)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Restarts watched processes that exit, with capped exponential backoff (a thread)."""

    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        stable_after: float = 30.0,
        poll_seconds: float = 0.2,
        on_restart: Callable[[ManagedProcess, int], None] | None = None,
    ) -> None:
        self.backoff = backoff or Backoff()
        self.stable_after = stable_after
        self.poll_seconds = poll_seconds
        self.on_restart = on_restart  # called after each restart: (process, restarts so far)
        self._watched: dict[int, Watched] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what is watched

    def watch(self, process: ManagedProcess) -> None:
        with self._lock:
            self._watched.setdefault(id(process), Watched(process))

    def unwatch(self, process: ManagedProcess) -> None:
        with self._lock:
            self._watched.pop(id(process), None)

    def restarts(self, process: ManagedProcess) -> int:
        with self._lock:
            entry = self._watched.get(id(process))
            return entry.restarts if entry else 0

    @contextlib.contextmanager
    def paused(self, *processes: ManagedProcess) -> Iterator[None]:
        """Leave these processes alone meanwhile (an intended stop, restart or kill)."""
        with self._lock:
            entries = [self._watched[id(p)] for p in processes if id(p) in self._watched]
            for entry in entries:
                entry.paused += 1
        try:
            yield
        finally:
            with self._lock:
                for entry in entries:
                    entry.paused -= 1
                    entry.restart_at = None

    # ------------------------------------------------------------------ running

    def start(self) -> Supervisor:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; the processes are left as they are (stop them afterwards)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.check(time.monotonic())
            except Exception:  # the supervisor must outlive any one failure
                logger.exception("supervisor check failed")

    def check(self, now: float) -> None:
        """One pass: note the processes found dead, restart those whose backoff is over."""
        with self._lock:
            entries = list(self._watched.values())
        for entry in entries:
            if self._stopping.is_set():
                return
            with self._lock:
                if entry.paused or entry.process.running or entry.process.proc is None:
                    continue
                if entry.restart_at is None:
                    self._schedule(entry, now)
                    continue
                if now < entry.restart_at:
                    continue
                entry.restart_at = None
                self._restart(entry)

    def _schedule(self, entry: Watched, now: float) -> None:
        proc = entry.process
        entry.last_exit = proc.proc.returncode if proc.proc is not None else None
        proc.cleanup_group()  # what it started goes with it, as with a container
        uptime = now - proc.started_at if proc.started_at else 0.0
        if uptime >= self.stable_after:
            entry.consecutive = 0
        entry.consecutive += 1
        delay = self.backoff.delay(entry.consecutive)
        entry.restart_at = now + delay
        logger.error(
            "%s %s after %.1f s up; restarting in %.1f s (restart %d in a row); its log:\n%s",
            proc.name,
            describe_exit(entry.last_exit),
            uptime,
            delay,
            entry.consecutive,
            proc.tail(10),
        )

    def _restart(self, entry: Watched) -> None:
        proc = entry.process
        try:
            proc.start()
        except OSError:
            logger.exception("%s could not be started; trying again later", proc.name)
            entry.consecutive += 1
            entry.restart_at = time.monotonic() + self.backoff.delay(entry.consecutive)
            return
        entry.restarts += 1
        pid = proc.proc.pid if proc.proc is not None else None
        logger.warning("%s restarted (pid %s, restart %d)", proc.name, pid, entry.restarts)
        if self.on_restart is not None:
            self.on_restart(proc, entry.restarts)
