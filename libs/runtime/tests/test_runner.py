"""The process runner as real processes: the one shutdown rule and the startup refusal."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SERVICE = textwrap.dedent(
    """
    import asyncio, sys
    from parley_runtime.runner import load_settings, run
    from parley_runtime.settings import ServiceSettings

    class Settings(ServiceSettings):
        instance_prefix = "probe"

        def check(self) -> None:
            super().check()
            if self.environment == "refuse":
                raise ValueError("this environment is refused")

    mode = sys.argv[1]

    async def serve(stop: asyncio.Event) -> None:
        print("serving", flush=True)
        await stop.wait()
        print("draining", flush=True)
        if mode == "hang":
            await asyncio.sleep(3600)

    run(load_settings(Settings), serve, drain_seconds=0.2, margin_seconds=0.3)
    """
)


def _start(tmp_path: Path, mode: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    script = tmp_path / "probe.py"
    script.write_text(SERVICE)
    return subprocess.Popen(
        [sys.executable, str(script), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PARLEY_INSTANCE_ID": "probe-1", **(env or {})},
    )


def _wait_line(proc: subprocess.Popen[str], text: str) -> list[str]:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never printed: {''.join(seen)}")


def test_sigterm_drains_and_exits_0(tmp_path: Path) -> None:
    proc = _start(tmp_path, "ok")
    _wait_line(proc, "serving")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "draining" in out and "stopped" in out
    assert "[probe-1]" in out  # the log format carries the instance id


def test_a_drain_that_hangs_is_ended_with_exit_1(tmp_path: Path) -> None:
    proc = _start(tmp_path, "hang")
    _wait_line(proc, "serving")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert "shutdown took longer than" in out


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    proc = _start(tmp_path, "hang")
    _wait_line(proc, "serving")
    proc.send_signal(signal.SIGINT)
    _wait_line(proc, "draining")
    time.sleep(0.05)  # let the first signal's handler finish (ordering, not timing)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert "second signal" in out


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"PARLEY_ENVIRONMENT": "refuse"}, "this environment is refused"),
        ({"PARLEY_LOG_LEVEL": "LOUD"}, "PARLEY_LOG_LEVEL"),
    ],
)
def test_a_bad_configuration_refuses_to_start(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    proc = _start(tmp_path, "ok", env)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert "refusing to start" in out
    assert reason in out
    assert "serving" not in out
