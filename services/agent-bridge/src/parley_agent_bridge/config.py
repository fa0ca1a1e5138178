"""Settings (environment) and agents as configuration (a YAML or JSON file).

An agent: id, name, model, system prompt, its MCP tool servers (a stdio command or a
streamable HTTP URL) and prices per 1k prompt/completion tokens. The offline demo agent
``agent-demo`` is always configured unless the file defines an agent with that id or
``PARLEY_AGENT_BRIDGE_DEMO_AGENT=false``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from parley_contract.ids import SafeId
from parley_runtime.filestore import FileStoreSettings
from parley_runtime.settings import ServiceSettings

DEMO_AGENT_ID = "agent-demo"


class Settings(FileStoreSettings, ServiceSettings):  # attachment bytes: FileStoreSettings
    """The agent bridge's own settings, over the shared ones (parley_runtime.settings)."""

    instance_prefix = "agent-bridge"

    http_host: str = Field(default="0.0.0.0", alias="PARLEY_AGENT_BRIDGE_HTTP_HOST")
    http_port: int = Field(default=8200, alias="PARLEY_AGENT_BRIDGE_HTTP_PORT")
    agents_file: str | None = Field(default=None, alias="PARLEY_AGENT_BRIDGE_AGENTS_FILE")
    # JSON list of agents, merged over the file (same shape as the file's "agents").
    agents_json: str | None = Field(default=None, alias="PARLEY_AGENT_BRIDGE_AGENTS_JSON")
    demo_agent: bool = Field(default=True, alias="PARLEY_AGENT_BRIDGE_DEMO_AGENT")
    # Pause between the demo agent's streamed words (0 in tests).
    demo_delay_seconds: float = Field(default=0.02, ge=0, alias="PARLEY_AGENT_BRIDGE_DEMO_DELAY")
    # Turns run at once by this replica (JetStream pull batch limit).
    max_concurrent_turns: int = Field(default=16, ge=1, alias="PARLEY_AGENT_BRIDGE_MAX_TURNS")
    # JetStream ack wait; in_progress() heartbeats are sent every ack_wait/3 while a turn runs,
    # so a replica killed mid-turn gives its turn to another within ack_wait (issue 11: < 10 s).
    ack_wait_seconds: float = Field(default=6.0, gt=1, alias="PARLEY_AGENT_BRIDGE_ACK_WAIT")
    max_deliver: int = Field(default=3, ge=1, alias="PARLEY_AGENT_BRIDGE_MAX_DELIVER")
    turn_timeout_seconds: float = Field(
        default=300.0, gt=0, alias="PARLEY_AGENT_BRIDGE_TURN_TIMEOUT"
    )
    max_steps: int = Field(default=8, ge=1, alias="PARLEY_AGENT_BRIDGE_MAX_STEPS")
    history_limit: int = Field(default=50, ge=1, le=500, alias="PARLEY_AGENT_BRIDGE_HISTORY_LIMIT")
    request_timeout_seconds: float = Field(
        default=10.0, gt=0, alias="PARLEY_AGENT_BRIDGE_REQUEST_TIMEOUT"
    )
    # How long startup waits for the agents' MCP servers before reporting ready (they keep
    # reconnecting in the background; an agent answers without the tools meanwhile).
    tools_wait_seconds: float = Field(default=20.0, ge=0, alias="PARLEY_AGENT_BRIDGE_TOOLS_WAIT")
    # On SIGTERM running turns get this long to finish; the rest are resumed by other replicas.
    drain_seconds: float = Field(default=10.0, ge=0, alias="PARLEY_AGENT_BRIDGE_DRAIN_SECONDS")
    presence_ttl_seconds: float = Field(
        default=30.0, gt=2, alias="PARLEY_AGENT_BRIDGE_PRESENCE_TTL"
    )
    # Announce agent:online/offline to at most this many conversations per agent.
    presence_conversations: int = Field(
        default=100, ge=0, le=1000, alias="PARLEY_AGENT_BRIDGE_PRESENCE_CONVERSATIONS"
    )


class McpServerConfig(BaseModel):
    """One MCP tool server of an agent: a stdio command or a streamable HTTP URL."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    # Per-call timeout; a slower tool gives a failed tool_result.
    timeout_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r}: set exactly one of 'command' or 'url'")
        return self


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: SafeId
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)  # published in GET /v1/agents
    model: str = Field(min_length=1, max_length=200)
    # 'openai': any OpenAI-compatible /chat/completions; 'demo': the offline scripted backend.
    backend: Literal["openai", "demo"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = None  # name of the env var holding the API key
    system_prompt: str = "You are a helpful assistant."
    temperature: float | None = None
    max_tokens: int | None = None
    thinking_visible: bool = True
    # Ask for the final usage chunk (stream_options.include_usage); off for servers that
    # refuse the option (usage is then estimated).
    stream_usage: bool = True
    # Extra fields merged into every chat-completions request (e.g. {"reasoning_effort": "low"}).
    extra_body: dict[str, Any] = Field(default_factory=dict)
    price_per_1k_prompt: float = Field(default=0.0, ge=0)
    price_per_1k_completion: float = Field(default=0.0, ge=0)
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)
    request_timeout_seconds: float = Field(default=120.0, gt=0)
    # After the first exchange the model titles an untitled conversation (never over a
    # user's title); every N messages it refreshes conversation.context (0: never). Their
    # model calls count in the conversation's totals (parley_agent_bridge.housekeeping).
    # The model takes images (OpenAI image_url parts): a message's attached images reach it
    # as data: URLs; otherwise it is told an image was attached (parley_agent_bridge.files).
    vision: bool = False
    auto_title: bool = True
    context_every_messages: int = Field(default=20, ge=0, le=100_000)

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round(
            prompt_tokens / 1000 * self.price_per_1k_prompt
            + completion_tokens / 1000 * self.price_per_1k_completion,
            8,
        )


class AgentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agents: list[AgentConfig] = Field(default_factory=list)


def demo_tools_server() -> McpServerConfig:
    """The bundled offline MCP server (stdio, this interpreter)."""
    return McpServerConfig(
        name="demo-tools",
        command=sys.executable,
        args=["-m", "parley_agent_bridge.demo_tools"],
        timeout_seconds=5.0,
    )


def demo_agent() -> AgentConfig:
    return AgentConfig(
        id=DEMO_AGENT_ID,
        name="Demo Agent",
        description=(
            "Offline scripted agent: ask it to search, calc, fail, or be slow; anything else "
            "gets reasoning and a streamed answer."
        ),
        model="parley-demo-1",
        backend="demo",
        system_prompt="You are Parley's offline demo agent.",
        price_per_1k_prompt=0.01,
        price_per_1k_completion=0.03,
        vision=True,  # it describes the images it gets (demo.describe_files)
        mcp_servers=[demo_tools_server()],
    )


class ConfigError(ValueError):
    pass


def _parse_text(text: str, source: str) -> Any:
    try:
        if source.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)  # YAML is a superset of JSON
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{source}: not valid YAML/JSON: {exc}") from None


def _agents_from(raw: Any, source: str) -> list[AgentConfig]:
    if raw is None:
        return []
    if isinstance(raw, list):
        raw = {"agents": raw}
    try:
        return AgentsFile.model_validate(raw).agents
    except ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_agents(settings: Settings) -> dict[str, AgentConfig]:
    """The agents of this bridge: the demo agent, then the file, then the env JSON."""
    agents: dict[str, AgentConfig] = {}
    if settings.demo_agent:
        agents[DEMO_AGENT_ID] = demo_agent()
    if settings.agents_file:
        path = Path(settings.agents_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read agents file {path}: {exc}") from None
        for agent in _agents_from(_parse_text(text, str(path)), str(path)):
            agents[agent.id] = agent
    if settings.agents_json:
        for agent in _agents_from(
            _parse_text(settings.agents_json, "PARLEY_AGENT_BRIDGE_AGENTS_JSON.json"),
            "PARLEY_AGENT_BRIDGE_AGENTS_JSON",
        ):
            agents[agent.id] = agent
    return agents
