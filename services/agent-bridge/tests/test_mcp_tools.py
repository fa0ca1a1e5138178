"""The MCP toolbox against real MCP servers: the bundled demo tools over stdio and HTTP."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley_agent_bridge.config import McpServerConfig, demo_tools_server
from parley_agent_bridge.tools import McpToolbox
from parley_devstack.servers import ManagedProcess, free_port, wait_port


@pytest.fixture
async def stdio_box() -> AsyncIterator[McpToolbox]:
    cfg = demo_tools_server().model_copy(update={"timeout_seconds": 1.5})
    box = McpToolbox([cfg])
    box.start()
    assert await box.wait_ready(30)
    yield box
    await box.close()


async def test_stdio_tools_listed_and_called(stdio_box: McpToolbox) -> None:
    names = {t["function"]["name"] for t in stdio_box.specs()}
    assert {"web_search", "calculator", "rate_limited_api", "sleep"} <= names
    out = await stdio_box.call("calculator", {"expression": "(2 + 3) * 7"})
    assert out.success and out.result == {"expression": "(2 + 3) * 7", "result": 35}
    out = await stdio_box.call("web_search", {"query": "ai", "limit": 2})
    assert out.success and len(out.result["articles"]) == 2


async def test_failing_unknown_and_slow_tools(stdio_box: McpToolbox) -> None:
    out = await stdio_box.call("rate_limited_api", {})
    assert not out.success and "API rate limit exceeded" in (out.error or "")
    out = await stdio_box.call("calculator", {"expression": "__import__('os')"})
    assert not out.success and "unsupported" in (out.error or "")
    out = await stdio_box.call("nope", {})
    assert not out.success and out.error == "unknown tool: nope"
    out = await stdio_box.call("sleep", {"seconds": 5})
    assert not out.success and "timed out" in (out.error or "")
    # The connection still works after a timeout.
    out = await stdio_box.call("calculator", {"expression": "1+1"})
    assert out.success


async def test_streamable_http_server(tmp_path: Path) -> None:
    port = free_port()
    proc = ManagedProcess(
        "mcp-http",
        [sys.executable, "-m", "parley_agent_bridge.demo_tools", "--http", str(port)],
        tmp_path / "mcp.log",
    )
    proc.start()
    try:
        wait_port("127.0.0.1", port, 30, proc.proc)
        box = McpToolbox([McpServerConfig(name="http", url=f"http://127.0.0.1:{port}/mcp")])
        box.start()
        assert await box.wait_ready(30), proc.tail()
        out = await box.call("web_search", {"query": "x"})
        assert out.success and out.result["query"] == "x"
        await box.close()
    finally:
        proc.stop()


async def test_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "parley_agent_bridge.demo_tools", "--http", str(port)]
    proc = ManagedProcess("mcp-http", argv, tmp_path / "mcp.log")
    proc.start()
    box = McpToolbox([McpServerConfig(name="http", url=f"http://127.0.0.1:{port}/mcp")])
    try:
        wait_port("127.0.0.1", port, 30, proc.proc)
        box.start()
        assert await box.wait_ready(30)
        proc.kill()
        down = await box.call("calculator", {"expression": "1+1"})
        assert down.success is False and down.error
        proc.start()
        wait_port("127.0.0.1", port, 30, proc.proc)
        for _ in range(100):  # the connection is reopened in the background
            out = await box.call("calculator", {"expression": "1+1"})
            if out.success:
                break
            await asyncio.sleep(0.3)
        assert out.success and out.result["result"] == 2
    finally:
        await box.close()
        proc.stop()
