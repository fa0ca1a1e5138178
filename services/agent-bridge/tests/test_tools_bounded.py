"""Issue 12, finding 5, as an attacker tries it: one chat line must not stall the tools of
everybody else. Real processes: gateway, conversation service, agent bridge, the bundled
MCP demo tools (stdio), NATS and the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from parley_client.testing import WsClient
from parley_devstack.stack import Stack

Connect = Callable[..., Awaitable[WsClient]]

pytestmark = pytest.mark.timeout(180)

BOMB = "calc (((9**99)**99)**99)**3"


async def test_an_exponent_bomb_fails_fast_and_alone(stack: Stack, connect: Connect) -> None:
    attacker, victim = await connect(stack), await connect(stack)
    bad_conv = await attacker.conversation("agent-demo")
    good_conv = await victim.conversation("agent-demo")
    started = time.monotonic()
    bomb = await attacker.send(bad_conv, BOMB)
    # The other user's tool call, sent while the bomb is being answered.
    calc = await victim.send(good_conv, "calc 12 * 7")
    bad_final, good_final = await asyncio.gather(attacker.answer(bomb, 30), victim.answer(calc, 30))
    # Before: the calculator computed for minutes and both tool calls timed out.
    assert time.monotonic() - started < 20
    assert "12 * 7 = 84" in good_final["content"]
    result = attacker.turn_messages(bomb)[1]["toolResults"][0]
    assert result["success"] is False, result
    assert "too large" in result["error"], result
    assert bad_final["content"].startswith("I apologize")


async def test_the_tool_server_stops_a_call_at_its_own_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever the client's timeout (a client that went away cancels nothing)."""
    from mcp.server.mcpserver.exceptions import ToolError

    from parley_agent_bridge import demo_tools

    monkeypatch.setattr(demo_tools, "TOOL_DEADLINE_SECONDS", 0.2)
    with pytest.raises(ToolError, match=r"limit of 0\.2 s"):
        await demo_tools.sleep(30)
    with pytest.raises(ToolError, match="finite"):
        await demo_tools.sleep(float("nan"))
    assert await demo_tools.calculator("6 * 7") == {"expression": "6 * 7", "result": 42}
    with pytest.raises(ToolError, match="too large"):
        await demo_tools.calculator("(((9**99)**99)**99)**3")
