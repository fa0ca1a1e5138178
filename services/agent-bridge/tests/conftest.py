"""Fixtures for the agent bridge's end-to-end tests: whole stacks (gateway, conversation
service, agent bridge as real processes on a real NATS and store), a scripted
OpenAI-compatible server and a real MCP server over streamable HTTP, both on free ports."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from parley_agent_bridge.openai_stub import OpenAIStub
from parley_client.testing import WsClient
from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.servers import ManagedProcess, StoreServer, free_port, wait_port
from parley_devstack.stack import Stack, StackConfig

LLM_AGENT = "agent-llm"  # also in the test modules
VISION_AGENT = "agent-vision"  # takes images (test_attachments_e2e)
PRICE_PROMPT = 1.0  # USD per 1k prompt tokens
PRICE_COMPLETION = 2.0


@pytest.fixture(scope="session")
def openai_stub() -> Iterator[OpenAIStub]:
    stub = OpenAIStub().start()
    yield stub
    stub.stop()


@pytest.fixture(scope="session")
def mcp_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo tools as a separate MCP server over streamable HTTP."""
    port = free_port()
    proc = ManagedProcess(
        "mcp-http",
        [sys.executable, "-m", "parley_agent_bridge.demo_tools", "--http", str(port)],
        tmp_path_factory.mktemp("mcp") / "mcp.log",
    )
    proc.start()
    try:
        wait_port("127.0.0.1", port, 30, proc.proc)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def agents_file(
    tmp_path_factory: pytest.TempPathFactory, openai_stub: OpenAIStub, mcp_http: str
) -> Path:
    path = tmp_path_factory.mktemp("agents") / "agents.yaml"
    path.write_text(
        json.dumps(
            {
                "agents": [
                    {
                        "id": LLM_AGENT,
                        "name": "Scripted LLM",
                        "model": "scripted-1",
                        "base_url": openai_stub.base_url,
                        "system_prompt": "You are a test agent.",
                        "price_per_1k_prompt": PRICE_PROMPT,
                        "price_per_1k_completion": PRICE_COMPLETION,
                        "mcp_servers": [
                            {"name": "tools-http", "url": mcp_http, "timeout_seconds": 2}
                        ],
                    },
                    {  # the same scripted model, taking images (test_attachments_e2e)
                        "id": VISION_AGENT,
                        "name": "Scripted vision LLM",
                        "model": "scripted-vision-1",
                        "base_url": openai_stub.base_url,
                        "vision": True,
                    },
                ]
            }
        )
    )
    return path


def start_stack(
    tmp: Path, store: StoreServer, agents_file: Path, *, bridges: int = 1, **bridge_env: str
) -> Stack:
    config = StackConfig(
        workdir=tmp,
        mongodb_url=store.url,
        database=f"parley_test_{uuid.uuid4().hex[:12]}",
        gateway_ports=[free_port()],
        agent_bridges=bridges,
        service_env={
            "agent-bridge": {
                "PARLEY_AGENT_BRIDGE_AGENTS_FILE": str(agents_file),
                "PARLEY_AGENT_BRIDGE_DEMO_DELAY": "0",
                **bridge_env,
            }
        },
    )
    return Stack(config).start()


StartStack = Callable[..., Stack]


@pytest.fixture(scope="session")
def stack_factory(store_server: StoreServer, agents_file: Path) -> StartStack:
    """``stack_factory(tmp, bridges=2, **bridge_env)``: a stack with the test agents."""

    def factory(tmp: Path, *, bridges: int = 1, **bridge_env: str) -> Stack:
        return start_stack(tmp, store_server, agents_file, bridges=bridges, **bridge_env)

    return factory


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, store_server: StoreServer, agents_file: Path
) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"), store_server, agents_file)
    try:
        yield s
    finally:
        s.stop()


Connect = Callable[..., Awaitable[WsClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    clients: list[WsClient] = []

    async def factory(
        stack: Stack, sub: str | None = None, kind: PrincipalKind = PrincipalKind.USER
    ) -> WsClient:
        token = mint_token(sub or f"user-{uuid.uuid4().hex[:8]}", kind, name="Tester")
        client = await WsClient.open(stack.gateway_url(0), token)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()
