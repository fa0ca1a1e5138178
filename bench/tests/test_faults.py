"""The quick form of the fault suite (``make faults`` runs every scenario, longer, each on
its own stack).

Real processes on free ports, 20 clients in 4 conversations over two gateways, a process
killed with SIGKILL under that load and restarted: every acked message must be stored once
and given once, in order, to every member. Only the scenarios that hold on main are here;
docs/reliability.md lists the others and why they fail. To keep ``make test`` short, the
scenarios of the default topology run in turn on one stack.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults.scenarios import BY_NAME, Timing, run, run_chain

pytestmark = pytest.mark.timeout(240)

QUICK = Timing(warmup=1.5, after=3.0)
CHAIN = ["gateway", "nats", "store", "conversation-only"]  # one stack, killed in turn
ALONE = ["bridge-1-of-2"]


def check(result: dict[str, object]) -> None:
    assert result["ok"], (result["scenario"], result["why"])
    acked = result["acked"]
    assert isinstance(acked, int) and acked > 50
    assert result["stored"] == acked
    delivered = result["delivered"]
    assert isinstance(delivered, int) and delivered >= acked * 5  # every member got each


async def test_kill_9_in_turn_on_one_stack(tmp_path: Path) -> None:
    for result in await run_chain([BY_NAME[n] for n in CHAIN], QUICK, tmp_path):
        check(result)


@pytest.mark.parametrize("name", ALONE)
async def test_kill_9_alone(name: str, tmp_path: Path) -> None:
    result = await run(BY_NAME[name], QUICK, tmp_path)
    check(result)
    agent = result["agent"]
    assert isinstance(agent, dict) and agent["answered_s"] is not None
