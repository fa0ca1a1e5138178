"""What the parts of the agent bridge share (:class:`parley_agent_bridge.service.Bridge` is
all of them): its settings, agents and their backends and toolboxes, the NATS connection and
the bookkeeping of running turns, tool calls and presence."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from parley_agent_bridge.backends import ModelBackend, OpenAIChatBackend
from parley_agent_bridge.config import AgentConfig, Settings
from parley_agent_bridge.demo import ScriptedDemoBackend
from parley_agent_bridge.metrics import Metrics
from parley_agent_bridge.tools import McpToolbox
from parley_agent_bridge.turn import Turn
from parley_runtime.filestore import open_store


def make_backend(agent: AgentConfig, demo_delay: float) -> ModelBackend:
    if agent.backend == "demo":
        return ScriptedDemoBackend(delay=demo_delay)
    return OpenAIChatBackend(
        base_url=agent.base_url,
        model=agent.model,
        api_key=agent.api_key(),
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        timeout=agent.request_timeout_seconds,
        stream_usage=agent.stream_usage,
        extra_body=agent.extra_body,
    )


class BridgeState:
    """The state every part of a bridge replica reads (set up here, connected in start())."""

    def __init__(
        self,
        settings: Settings,
        agents: dict[str, AgentConfig],
        metrics: Metrics,
        *,
        demo_delay: float = 0.02,
    ) -> None:
        self.settings = settings
        self.agents = agents
        self.metrics = metrics
        self.instance_id = settings.instance_id
        self.backends = {a.id: make_backend(a, demo_delay) for a in agents.values()}
        self.toolboxes = {a.id: McpToolbox(a.mcp_servers) for a in agents.values()}
        # Attachment bytes (files.py); connections open on first use.
        self.files = open_store(settings.store_config())
        self.nc: NatsClient | None = None
        self.kv: KeyValue | None = None
        self.ready = False
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._turn_tasks: set[asyncio.Task[None]] = set()
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self._describing: dict[str, asyncio.Task[None]] = {}  # conversation → title/context
        self._describe_slots = asyncio.Semaphore(settings.max_concurrent_turns)
        self._running: dict[str, set[Turn]] = defaultdict(set)
        self._conv_locks: dict[str, asyncio.Lock] = {}
        self._conv_users: dict[str, int] = defaultdict(int)
        self._slots = asyncio.Semaphore(settings.max_concurrent_turns)
        self._announced: dict[str, set[str]] = defaultdict(set)  # agentId → conversations
        self._subs: list[Any] = []
        self._pull: Any = None
