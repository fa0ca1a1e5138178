"""The supervisor on real child processes: restarts with capped exponential backoff, leaves
paused processes alone, and a killed process takes its own children with it."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from parley_devstack.servers import ManagedProcess
from parley_devstack.supervisor import Backoff, Supervisor, describe_exit

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial=0.5, factor=2.0, maximum=4.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"


def test_a_crashing_process_is_restarted_later_each_time(tmp_path: Path) -> None:
    """Driven by hand (check(now)), so the schedule is exact: 0.5 s, then 1 s, then 2 s."""
    proc = ManagedProcess(
        "crasher", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "c.log"
    )
    sup = Supervisor(Backoff(initial=0.5, factor=2.0, maximum=2.0), stable_after=60)
    sup.watch(proc)
    proc.start()
    base = time.monotonic()
    for attempt, delay in enumerate([0.5, 1.0, 2.0, 2.0], start=1):
        assert proc.proc is not None
        proc.proc.wait(timeout=20)
        sup.check(base)  # seen dead: scheduled
        first = proc.proc
        sup.check(base + delay - 0.01)
        assert proc.proc is first, f"restarted before its backoff ({delay} s)"
        sup.check(base + delay)
        assert proc.proc is not first, f"not restarted after {delay} s"
        assert sup.restarts(proc) == attempt
        base += delay
    proc.stop()


def test_a_killed_process_comes_back_by_itself(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", SLEEPER, tmp_path / "s.log")
    restarted: list[int] = []
    proc.start()
    assert proc.proc is not None
    old = proc.proc.pid
    with Supervisor(Backoff(initial=0.1), on_restart=lambda p, n: restarted.append(n)) as sup:
        sup.watch(proc)
        os.kill(old, signal.SIGKILL)
        _wait_for(lambda: restarted == [1] and proc.running)
        assert proc.proc.pid != old
        # An intended stop is not a crash.
        with sup.paused(proc):
            proc.stop()
            time.sleep(0.5)
            assert not proc.running and restarted == [1]
    time.sleep(0.3)
    assert not proc.running, "the supervisor was stopped: nothing comes back"


def test_stop_and_kill_take_the_process_group_along(tmp_path: Path) -> None:
    """Like a container: what the process started goes with it (the bridge's MCP servers)."""
    pidfile = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    )
    for how in ("kill", "stop"):
        pidfile.unlink(missing_ok=True)
        proc = ManagedProcess("parent", [sys.executable, "-c", code], tmp_path / "p.log")
        proc.start()
        _wait_for(lambda: pidfile.exists() and pidfile.read_text() != "")
        grandchild = int(pidfile.read_text())
        assert _alive(grandchild)
        getattr(proc, how)()

        def gone(pid: int = grandchild) -> bool:
            return not _alive(pid)

        _wait_for(gone, timeout=10)
