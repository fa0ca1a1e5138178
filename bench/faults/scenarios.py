"""The scenarios of issue 11: what is killed, what is restarted when, and the limits.

Each scenario starts a fresh stack (so one crash cannot spoil the next), connects the load,
lets it run ``warmup`` seconds, kills the processes with SIGKILL, restarts them after
``restart_after`` seconds (as a supervisor would), keeps the load going ``after`` seconds
more, stops sending, reads the stored history back over HTTP and compares.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.faults import agent
from bench.faults.checks import analyze, verdict
from bench.faults.harness import FaultStack, Topology
from bench.faults.workload import Workload

logger = logging.getLogger(__name__)


@dataclass
class Scenario:
    name: str
    what: str  # one line for the table
    topology: Topology
    kill: list[str]  # process names; "bridge:busy" = the bridge running the agent turn
    restart_after: float = 1.0
    max_wait_limit: float | None = None
    resume_with_since: bool = True
    agent_turn: str = ""  # "tool" or "stream": where the agent turn is killed
    # Acked messages may be lost (a store run without durable writes): the scenario checks
    # that what is stored reaches every member all the same (seq epochs, protocol 4.1).
    allow_loss: bool = False
    # Duplicate deliveries (same message, same seq) allowed: a resume with session alone.
    allow_duplicates: bool = False


SCENARIOS: list[Scenario] = [
    Scenario("gateway", "a gateway", Topology(), ["gateway-1"]),
    Scenario(
        "gateway-session-only",
        "a gateway; clients resume with session alone",
        Topology(),
        ["gateway-1"],
        resume_with_since=False,
        allow_duplicates=True,  # protocol 1: session alone is at-least-once, dups by seq
    ),
    Scenario(
        "conversation-1-of-2",
        "one of two conversation replicas",
        Topology(conversation_replicas=2),
        ["conversation-1"],
        max_wait_limit=1.5,
    ),
    Scenario("conversation-only", "the only conversation replica", Topology(), ["conversation-1"]),
    Scenario("nats", "NATS (restarted after 3 s, same JetStream dir)", Topology(), ["nats"], 3.0),
    Scenario("store", "the store", Topology(), ["store"]),
    Scenario(
        "store+conversation",
        "the store and the conversation service",
        Topology(),
        ["store", "conversation-1"],
    ),
    Scenario(
        "store-not-durable",
        "the store and the conversation service, the store without durable writes",
        Topology(durable_store=False),
        ["store", "conversation-1"],
        allow_loss=True,
    ),
    Scenario(
        "bridge-1-of-2",
        "the agent-bridge replica running a turn (of 2)",
        Topology(agent_bridges=2),
        ["bridge:busy"],
        agent_turn="tool",
    ),
    Scenario(
        "bridge-1-of-2-stream",
        "the agent-bridge replica running a turn (of 2), mid-stream after its thinking step",
        Topology(agent_bridges=2),
        ["bridge:busy"],
        agent_turn="stream",
    ),
    Scenario(
        "bridge-only",
        "the only agent-bridge replica, mid-turn (restarted after 12 s)",
        Topology(agent_bridges=1),
        ["bridge:busy"],
        restart_after=12.0,
        agent_turn="tool",
    ),
]
BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class Timing:
    warmup: float = 3.0
    after: float = 6.0
    interval: float = 0.25  # seconds between one client's ack and its next send
    conversations: int = 4
    members: int = 5


async def run(scenario: Scenario, timing: Timing, workdir: Path | None = None) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"faults-{scenario.name}-", dir=workdir) as tmp:
        fs = FaultStack(Path(tmp), scenario.topology)
        await asyncio.to_thread(fs.start)
        try:
            result = await _run_on(fs, scenario, timing)
        finally:
            await asyncio.to_thread(fs.stop)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


async def run_chain(
    scenarios: list[Scenario], timing: Timing, workdir: Path | None = None
) -> list[dict[str, Any]]:
    """Several scenarios of one topology in turn on one stack (the quick form: one stack
    start instead of one per scenario). Each scenario has its own users and conversations;
    a stack that did not recover from the previous kill fails the next one, as it should."""
    topology = scenarios[0].topology
    if any(s.topology != topology for s in scenarios):
        raise ValueError("a chain runs scenarios of one topology")
    results = []
    with tempfile.TemporaryDirectory(prefix="faults-chain-", dir=workdir) as tmp:
        fs = FaultStack(Path(tmp), topology)
        await asyncio.to_thread(fs.start)
        try:
            for scenario in scenarios:
                started = time.monotonic()
                result = await _run_on(fs, scenario, timing)
                result["seconds"] = round(time.monotonic() - started, 1)
                results.append(result)
        finally:
            await asyncio.to_thread(fs.stop)
    return results


async def _run_on(fs: FaultStack, scenario: Scenario, timing: Timing) -> dict[str, Any]:
    load = Workload(
        fs.ws_urls,
        fs.http_urls,
        scenario.name.replace("+", "-"),
        conversations=timing.conversations,
        members=timing.members,
        interval=timing.interval,
        resume_with_since=scenario.resume_with_since,
    )
    turn: agent.AgentTurn | None = None
    try:
        await load.setup()
        load.start()
        await asyncio.sleep(timing.warmup)
        kill = list(scenario.kill)
        if scenario.agent_turn:
            turn = agent.AgentTurn(fs, load.clients[0].ws_urls)
            kill = [await turn.start(scenario.agent_turn)]
        kill_at = fs.kill(*kill)
        if turn is not None:
            turn.killed(kill_at)
        await asyncio.sleep(scenario.restart_after)
        await fs.restart(*kill)
        restarted = time.monotonic() - kill_at
        await asyncio.sleep(timing.after)
        await load.stop()
        histories = await load.histories()
        result = analyze(load.convs, histories, kill_at)
        result["restarted_s"] = round(restarted, 2)
        why = verdict(
            result, scenario.max_wait_limit, scenario.allow_loss, scenario.allow_duplicates
        )
        if turn is not None:
            result["agent"] = await turn.finish(fs.http_urls)
            why += agent.verdict(result["agent"])
    finally:
        await load.close()
        if turn is not None:
            await turn.close()
    result.update(
        scenario=scenario.name,
        killed=scenario.what,
        processes=kill,
        ok=not why,
        why=why,
    )
    return result
