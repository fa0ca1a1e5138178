"""The quick form of the fault suite (``make faults`` runs every scenario, longer).

Real processes on free ports, 20 clients in 4 conversations over two gateways, a process
killed with SIGKILL under that load and restarted: every acked message must be stored once
and given once, in order, to every member. Only the scenarios that hold on main are here;
docs/reliability.md lists the others and why they fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults.scenarios import BY_NAME, Timing, run

pytestmark = pytest.mark.timeout(150)

QUICK = ["gateway", "conversation-only", "nats", "store"]


@pytest.mark.parametrize("name", QUICK)
async def test_kill_9_loses_nothing_acked(name: str, tmp_path: Path) -> None:
    result = await run(BY_NAME[name], Timing(warmup=1.5, after=3.0), tmp_path)
    assert result["ok"], result["why"]
    assert result["acked"] > 100
    assert result["stored"] == result["acked"]
    assert result["delivered"] >= result["acked"] * 5  # every member got every message
