"""Agents as configuration: file (YAML/JSON), environment JSON, the default demo agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parley_agent_bridge.config import ConfigError, Settings, load_agents


def settings(**kw: object) -> Settings:
    return Settings.model_validate(kw)


def test_demo_agent_is_configured_by_default() -> None:
    agents = load_agents(settings())
    assert list(agents) == ["agent-demo"]
    demo = agents["agent-demo"]
    assert demo.backend == "demo" and demo.mcp_servers[0].command
    assert load_agents(settings(PARLEY_AGENT_BRIDGE_DEMO_AGENT=False)) == {}


def test_yaml_file_and_env_json_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        """
agents:
  - id: agent-gpt
    name: General
    model: gpt-4o-mini
    api_key_env: TEST_KEY_FOR_AGENT
    price_per_1k_prompt: 0.5
    price_per_1k_completion: 1.5
    mcp_servers:
      - {name: http, url: "http://tools:8765/mcp"}
      - {name: local, command: my-mcp, args: ["--x"]}
"""
    )
    env_json = json.dumps(
        [{"id": "agent-code", "name": "Code", "model": "qwen", "base_url": "http://vllm/v1"}]
    )
    monkeypatch.setenv("TEST_KEY_FOR_AGENT", "sk-test")
    agents = load_agents(
        settings(
            PARLEY_AGENT_BRIDGE_AGENTS_FILE=str(path), PARLEY_AGENT_BRIDGE_AGENTS_JSON=env_json
        )
    )
    assert sorted(agents) == ["agent-code", "agent-demo", "agent-gpt"]
    gpt = agents["agent-gpt"]
    assert gpt.api_key() == "sk-test"
    assert gpt.cost(2000, 1000) == pytest.approx(1.0 + 1.5)
    assert [s.name for s in gpt.mcp_servers] == ["http", "local"]
    assert agents["agent-code"].base_url == "http://vllm/v1"
    assert agents["agent-code"].api_key() is None


def test_json_file_list_form(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(
        json.dumps([{"id": "agent-demo", "name": "Mine", "model": "m", "backend": "demo"}])
    )
    agents = load_agents(settings(PARLEY_AGENT_BRIDGE_AGENTS_FILE=str(path)))
    assert agents["agent-demo"].name == "Mine"  # the file overrides the default demo agent


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agents: [{id: 'bad id', name: x, model: m}]", "id"),
        ("agents: [{id: a, name: x, model: m, mcp_servers: [{name: s}]}]", "exactly one of"),
        ("agents: [{id: a, name: x, model: m, surprise: 1}]", "surprise"),
        ("agents: [{id: a, name: x", "not valid YAML"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_agents(settings(PARLEY_AGENT_BRIDGE_AGENTS_FILE=str(path)))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_agents(settings(PARLEY_AGENT_BRIDGE_AGENTS_FILE=str(tmp_path / "nope.yaml")))
