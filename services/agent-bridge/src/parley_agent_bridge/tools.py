"""Tools of an agent: its MCP servers, reached with the official ``mcp`` SDK client.

Each MCP server gets one long-lived ``mcp.Client`` (stdio subprocess or streamable HTTP),
opened in the service lifespan and held by a task of its own (anyio contexts must be left
by the task that entered them). A dead connection is reopened with capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2  # the HTTP client of the mcp SDK's streamable HTTP transport
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from parley_agent_bridge.backends import ToolSpec
from parley_agent_bridge.config import McpServerConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    result: Any
    success: bool
    error: str | None
    execution_time_ms: float


class ToolRunner(Protocol):
    def specs(self) -> list[ToolSpec]: ...

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome: ...


def _elapsed_ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 1)


def _result_value(result: Any) -> tuple[Any, str]:
    """The JSON value of a CallToolResult, and its text for error messages."""
    texts = [
        str(getattr(block, "text", ""))
        for block in (result.content or [])
        if getattr(block, "type", None) == "text"
    ]
    text = "\n".join(texts)
    if result.structured_content is not None:
        return result.structured_content, text
    if len(texts) == 1:
        try:
            return json.loads(texts[0]), text
        except json.JSONDecodeError:
            return texts[0], text
    return (texts or None), text


class McpConnection:
    """One MCP server: a task that keeps a ``mcp.Client`` open and lists its tools."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.client: Client | None = None
        self.tools: list[ToolSpec] = []
        self.ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._broken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _target(self) -> Any:
        cfg = self.config
        if cfg.command is not None:
            return StdioServerParameters(command=cfg.command, args=cfg.args, env=cfg.env)
        assert cfg.url is not None
        if cfg.headers:
            return streamable_http_client(
                cfg.url, http_client=httpx2.AsyncClient(headers=cfg.headers)
            )
        return cfg.url

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp:{self.config.name}")

    async def _run(self) -> None:
        backoff = 0.5
        while not self._closing.is_set():
            try:
                async with Client(self._target()) as client:
                    listed = await client.list_tools()
                    self.tools = [
                        {
                            "type": "function",
                            "function": {
                                "name": t.name,
                                "description": t.description or "",
                                "parameters": t.input_schema or {"type": "object"},
                            },
                        }
                        for t in listed.tools
                    ]
                    self.client = client
                    self._broken.clear()
                    self.ready.set()
                    backoff = 0.5
                    logger.info(
                        "MCP server %s connected: %s",
                        self.config.name,
                        ", ".join(t["function"]["name"] for t in self.tools),
                    )
                    closing = asyncio.create_task(self._closing.wait())
                    broken = asyncio.create_task(self._broken.wait())
                    try:
                        await asyncio.wait({closing, broken}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        closing.cancel()
                        broken.cancel()
            except Exception as exc:  # transport and protocol failures of many kinds
                logger.warning("MCP server %s unavailable: %s", self.config.name, exc)
            finally:
                self.client = None
                self.ready.clear()
            if self._closing.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), backoff)
            backoff = min(backoff * 2, 30.0)

    async def wait_ready(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), seconds)
        return self.ready.is_set()

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        start = time.monotonic()
        client = self.client
        if client is None:
            return ToolOutcome(None, False, f"tool server {self.config.name} is unavailable", 0.0)
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                result = await client.call_tool(name, arguments)
        except TimeoutError:
            return ToolOutcome(
                None,
                False,
                f"tool {name} timed out after {self.config.timeout_seconds:g}s",
                _elapsed_ms(start),
            )
        except MCPError as exc:
            return ToolOutcome(None, False, f"tool {name} failed: {exc}", _elapsed_ms(start))
        except Exception as exc:  # the connection broke: reconnect in the background
            logger.warning("MCP server %s call failed: %r", self.config.name, exc)
            self._broken.set()
            return ToolOutcome(
                None, False, f"tool server {self.config.name} failed: {exc}", _elapsed_ms(start)
            )
        value, text = _result_value(result)
        if result.is_error:
            return ToolOutcome(None, False, text or f"tool {name} failed", _elapsed_ms(start))
        return ToolOutcome(value, True, None, _elapsed_ms(start))

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except TimeoutError:
                self._task.cancel()
                await asyncio.wait({self._task})


class McpToolbox:
    """All tools of one agent: the union of its MCP servers' tools (first server wins)."""

    def __init__(self, servers: list[McpServerConfig]) -> None:
        self.connections = [McpConnection(cfg) for cfg in servers]

    def start(self) -> None:
        for conn in self.connections:
            conn.start()

    async def wait_ready(self, seconds: float) -> bool:
        results = await asyncio.gather(*(c.wait_ready(seconds) for c in self.connections))
        return all(results)

    def _owner(self, name: str) -> McpConnection | None:
        for conn in self.connections:
            if any(t["function"]["name"] == name for t in conn.tools):
                return conn
        return None

    def specs(self) -> list[ToolSpec]:
        seen: set[str] = set()
        specs: list[ToolSpec] = []
        for conn in self.connections:
            if not conn.ready.is_set():
                continue
            for tool in conn.tools:
                name = tool["function"]["name"]
                if name not in seen:
                    seen.add(name)
                    specs.append(tool)
        return specs

    def has_tool(self, name: str) -> bool:
        return self._owner(name) is not None

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        conn = self._owner(name)
        if conn is None:
            return ToolOutcome(None, False, f"unknown tool: {name}", 0.0)
        return await conn.call(name, arguments)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.connections))


def parse_arguments(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A model's tool arguments (JSON text) as a dict, or the error to report."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        return None, f"tool arguments are not valid JSON: {exc}"
    if not isinstance(value, dict):
        return None, "tool arguments must be a JSON object"
    return value, None
