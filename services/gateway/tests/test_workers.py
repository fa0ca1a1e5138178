"""PARLEY_GATEWAY_WORKERS: one port served by several gateway processes (workers.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from websockets.exceptions import InvalidStatus

from .conftest import uid


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()]


async def _one_client_per_worker(gw: Any, clients: Any, workers: int) -> dict[str, Any]:
    """Connect until a client sits on each worker (the kernel picks the worker)."""
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while len(seen) < workers and time.monotonic() < deadline:
        try:
            client = await clients(gw.ws_url, uid("w"))
        except InvalidStatus:  # 503: that worker is not ready yet
            await asyncio.sleep(0.2)
            continue
        seen.setdefault(client.frames[0]["data"]["instanceId"], client)
    return seen


async def test_workers_share_the_port_and_drain_together(
    gateway_factory: Any, clients: Any
) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_WORKERS": "2"})
    assert gw.proc.proc is not None
    assert len(_children(gw.proc.proc.pid)) == 2
    seen = await _one_client_per_worker(gw, clients, 2)
    assert set(seen) == {f"{gw.name}-1", f"{gw.name}-2"}  # two instances, one port
    gw.proc.signal(signal.SIGTERM)  # to the parent: each worker drains its own clients
    for client in seen.values():
        await asyncio.wait_for(client.closed.wait(), 15)
        assert client.ws.close_code == 1001
    assert await asyncio.to_thread(gw.proc.proc.wait, 30) == 0


async def test_a_worker_that_dies_stops_the_gateway(gateway_factory: Any, clients: Any) -> None:
    gw = gateway_factory({"PARLEY_GATEWAY_WORKERS": "2"})
    assert gw.proc.proc is not None
    first, second = _children(gw.proc.proc.pid)
    os.kill(first, signal.SIGKILL)
    code = await asyncio.to_thread(gw.proc.proc.wait, 30)
    assert code != 0  # the orchestrator restarts the whole gateway
    await asyncio.sleep(0.5)
    assert _gone(second)  # stopped too
    assert "stopping the others" in gw.proc.log_path.read_text(errors="replace")


def _gone(pid: int) -> bool:
    """No such process, or only its zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
