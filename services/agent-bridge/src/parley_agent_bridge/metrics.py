"""Prometheus metrics of the agent bridge (own registry, names prefixed ``parley_``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.turns = Counter(
            "parley_agent_bridge_turns_total",
            "Agent turns by outcome",
            ["agent", "outcome"],
            registry=r,
        )
        self.turn_seconds = Histogram(
            "parley_agent_bridge_turn_seconds",
            "Duration of agent turns",
            ["agent"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320),
            registry=r,
        )
        self.running = Gauge("parley_agent_bridge_turns_running", "Turns running now", registry=r)
        self.tool_calls = Counter(
            "parley_agent_bridge_tool_calls_total",
            "Tool calls (turns and tool:call) by success",
            ["tool", "success"],
            registry=r,
        )
        self.tokens = Counter(
            "parley_agent_bridge_tokens_total", "Model tokens", ["agent", "kind"], registry=r
        )
        self.cost = Counter(
            "parley_agent_bridge_cost_usd_total", "Model cost", ["agent"], registry=r
        )
        self.redeliveries = Counter(
            "parley_agent_bridge_redeliveries_total", "Turns delivered more than once", registry=r
        )
