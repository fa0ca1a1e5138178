"""Issue 12, finding 5, as an attacker tries it: one chat line must not stall the tools of
everybody else. Real processes: gateway, conversation service, agent bridge, the bundled
MCP demo tools (stdio), NATS and the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from parley_agent_bridge.testing import WsClient
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
