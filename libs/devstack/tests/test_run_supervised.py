"""`make run` supervises (issue 11.6): a process of the local stack that is killed with
kill -9 comes back by itself and the system answers again; Ctrl-C still stops everything
and leaves no process behind.

Runs `parley run` itself (``python -m parley_devstack.cli run``) on free ports with its own
nats-server and embedded store, finds its processes in /proc, and talks to it as a client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from parley_contract.auth import mint_token
from parley_devstack.servers import free_port
from parley_devstack.stack import http_ok


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, state, command line), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(entry.name)] = (int(stat[1]), stat[0], cmd)
    return table


def _descendants(root: int) -> dict[int, str]:
    table = _proc_table()
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, state, cmd) in table.items():
            if ppid == parent and state != "Z" and pid not in found:
                found[pid] = cmd
                todo.append(pid)
    return found


def _alive(pid: int) -> bool:
    entry = _proc_table().get(pid)
    return entry is not None and entry[1] != "Z"


def _one(root: int, needle: str) -> int:
    pids = [pid for pid, cmd in _descendants(root).items() if needle in cmd]
    assert len(pids) == 1, (needle, _descendants(root))
    return pids[0]


def _eventually(what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.3)


def _create_conversation(port: int) -> bool:
    """A user creates a conversation through this gateway: needs the gateway, NATS, the
    conversation service and the store. True when the reply is a success."""
    url = f"ws://127.0.0.1:{port}/ws?access_token={mint_token('user-1')}"
    try:
        with connect(url, open_timeout=5, close_timeout=2) as ws:
            ws.send(json.dumps({"event": "conversation:create", "id": "c1", "data": {}}))
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                frame: dict[str, Any] = json.loads(ws.recv(timeout=8))
                if frame.get("id") == "c1":
                    return bool(frame.get("success"))
    except (OSError, TimeoutError, WebSocketException):
        return False
    return False


@pytest.mark.timeout(400)
def test_run_restarts_what_dies_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    env = {
        **os.environ,
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # nothing there: parley run starts one
        "MONGODB_URL": "",  # the embedded store, started by parley run
        "PARLEY_RUN_GATEWAY_PORTS": ",".join(map(str, ports)),
    }
    out_path = tmp_path / "run.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley_devstack.cli", "run", "--data-dir", str(tmp_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seen: dict[int, str] = {}
    try:
        _eventually(
            "every process ready",
            lambda: proc.poll() is None and "Parley is running." in out_path.read_text(),
        )
        assert _create_conversation(ports[0])
        seen.update(_descendants(proc.pid))

        # kill -9 the conversation service: it comes back and the system answers again.
        conversation = _one(proc.pid, "parley_conversation")
        os.kill(conversation, signal.SIGKILL)
        _eventually(
            "a new conversation service",
            lambda: any(
                "parley_conversation" in cmd and pid != conversation
                for pid, cmd in _descendants(proc.pid).items()
            ),
        )
        _eventually("conversation:create answered again", lambda: _create_conversation(ports[0]))

        # kill -9 a gateway: it comes back on its port and answers.
        second = next(
            pid
            for pid, cmd in _descendants(proc.pid).items()
            if "parley_gateway" in cmd and _env(pid).get("PARLEY_GATEWAY_PORT") == str(ports[1])
        )
        os.kill(second, signal.SIGKILL)
        _eventually(
            "gateway-2 back",
            lambda: not _alive(second) and http_ok(f"http://127.0.0.1:{ports[1]}/readyz"),
        )
        _eventually("gateway-2 answers", lambda: _create_conversation(ports[1]))
        assert proc.poll() is None, "the stack stopped instead of restarting"
        seen.update(_descendants(proc.pid))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = out_path.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "conversation-1 was killed by SIGKILL" in text, text[-3000:]
    assert "conversation-1 restarted" in text and "gateway-2 restarted" in text, text[-3000:]
    left = {pid: cmd for pid, cmd in seen.items() if _alive(pid)}
    assert not left, f"still running after Ctrl-C: {left}"
    assert not any(http_ok(f"http://127.0.0.1:{p}/healthz") for p in ports)


def _env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}
