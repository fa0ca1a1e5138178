"""Scale: bridge replicas share the turns; each user message is answered exactly once, also
when a replica dies mid-turn or a turn is published twice."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest

from parley_agent_bridge.openai_stub import OpenAIStub, Step
from parley_client.testing import WsClient
from parley_contract import jsonutil, subjects
from parley_contract.internal import AgentTurn
from parley_devstack.stack import ServiceProcess, Stack

pytestmark = pytest.mark.timeout(240)

Connect = Callable[..., Awaitable[WsClient]]
StartStack = Callable[..., Stack]
LLM_AGENT = "agent-llm"


def turns_done(svc: ServiceProcess) -> dict[str, float]:
    """parley_agent_bridge_turns_total of one bridge, by outcome."""
    with urllib.request.urlopen(f"{svc.base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(
        r'parley_agent_bridge_turns_total\{agent="[^"]+",outcome="([^"]+)"\} (\S+)', text
    ):
        out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out


@pytest.fixture(scope="module")
def two_bridges(
    tmp_path_factory: pytest.TempPathFactory, stack_factory: StartStack
) -> Iterator[Stack]:
    s = stack_factory(
        tmp_path_factory.mktemp("stack2"), bridges=2, PARLEY_AGENT_BRIDGE_ACK_WAIT="3"
    )
    try:
        yield s
    finally:
        s.stop()


async def test_two_replicas_answer_each_message_once(two_bridges: Stack, connect: Connect) -> None:
    client = await connect(two_bridges)
    convs = [await client.conversation("agent-demo") for _ in range(8)]
    users = await asyncio.gather(
        *(client.send(c, f"hello number {i}") for i, c in enumerate(convs))
    )
    for user in users:
        await client.answer(user, seconds=60)
    await asyncio.sleep(1.0)  # a duplicate answer would arrive by now
    for user in users:
        msgs = client.turn_messages(user)
        assert [(m["role"], m["messageType"]) for m in msgs] == [
            ("assistant", "thinking"),
            ("assistant", "text"),
        ], msgs
    done = [turns_done(b) for b in two_bridges.bridges]
    assert sum(d.get("answered", 0) for d in done) >= 8


async def test_turn_published_twice_is_answered_once(two_bridges: Stack, connect: Connect) -> None:
    client = await connect(two_bridges)
    conv = await client.conversation("agent-demo")
    user = await client.send(conv, "hello once")
    await client.answer(user, seconds=60)
    before = sum(turns_done(b).get("already-answered", 0) for b in two_bridges.bridges)
    nc = await nats.connect(two_bridges.nats_url)
    try:
        turn = AgentTurn(
            conversation_id=conv, agent_id="agent-demo", message_id=user["_id"], seq=user["seq"]
        )
        await nc.jetstream().publish(
            subjects.AGENT_TURN,
            jsonutil.dumps(turn.model_dump(by_alias=True)),
            stream=subjects.STREAM_AGENT_TURNS,
            headers={"Nats-Msg-Id": user["_id"] + "-again"},  # past the dedup window's id
        )
    finally:
        await nc.drain()
    for _ in range(150):  # the metric is the only trace of a turn that wrote nothing
        if sum(turns_done(b).get("already-answered", 0) for b in two_bridges.bridges) > before:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the duplicate turn was not handled")
    history = await client.http_get(f"/v1/conversations/{conv}/messages")
    assert [m["messageType"] for m in history["items"]] == ["text", "thinking", "text"]


async def test_replica_killed_mid_turn_is_resumed_once(
    tmp_path: Path, stack_factory: StartStack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    """Issue 11: kill -9 of the replica running a turn (two replicas, default ack wait): the
    other one takes over within 10 s, ends the dead stream (interrupted), says it is
    recovering, and every step is stored once."""
    openai_stub.script(
        "phoenix-e2e",
        Step(
            content=["Checking."],
            tool_calls=[("call_k1", "calculator", '{"expression": "2 + 2"}')],
        ),
        Step(content=[f"part{i} " for i in range(40)], delay=0.05),
    )
    stack = stack_factory(tmp_path, bridges=2)
    try:
        client = await connect(stack)
        conv = await client.conversation(LLM_AGENT)
        user = await client.send(conv, "phoenix-e2e compute and explain")
        # The tool step is stored; the answer is streaming: kill the replica now.
        delta = await client.wait_for(
            lambda f: f.get("event") == "message:stream-delta" and f["data"]["delta"] == "part3 ",
            30,
        )
        dead_stream = delta["data"]["streamId"]
        busy = [b for b in stack.bridges if turns_running(b) > 0]
        assert len(busy) == 1
        killed_at = asyncio.get_running_loop().time()
        busy[0].process.kill()  # SIGKILL; the other replica is the only one left
        final = await client.answer(user, seconds=30)
        took = asyncio.get_running_loop().time() - killed_at
        assert took < 10.0, f"the turn completed {took:.1f} s after the kill"
        await asyncio.sleep(1.0)
        msgs = client.turn_messages(user)
        assert [(m["role"], m["messageType"]) for m in msgs] == [
            ("assistant", "tool_call"),
            ("tool", "tool_result"),
            ("assistant", "text"),
        ], msgs
        assert final["content"] == "".join(f"part{i} " for i in range(40))
        assert msgs[1]["toolResults"][0]["result"]["result"] == 4
        # The dead attempt's stream is ended, before the new attempt's starts.
        ends = [f["data"] for f in client.events("message:stream-end", conv)]
        assert {"streamId": dead_stream, "finishReason": "interrupted"} in ends
        recovering = [
            f for f in client.events("agent:thinking", conv) if f["data"]["status"] == "recovering"
        ]
        assert recovering
        # The retry resumed after the stored tool result instead of calling the tool again.
        retried = [r for r in openai_stub.requests if "phoenix-e2e" in str(r["messages"])]
        assert retried[-1]["messages"][-1]["tool_call_id"] == "call_k1"
        assert sum(1 for r in retried if r["messages"][-1]["role"] == "user") == 1
        online = client.events("agent:online", conv)
        assert online and online[0]["data"]["agentId"] == LLM_AGENT
    finally:
        stack.stop()


def turns_running(svc: ServiceProcess) -> float:
    with urllib.request.urlopen(f"{svc.base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(r"^parley_agent_bridge_turns_running (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_sigterm_mid_turn_exits_promptly_and_the_turn_is_answered_once(
    two_bridges: Stack, connect: Connect
) -> None:
    client = await connect(two_bridges)
    conv = await client.conversation("agent-demo")
    user = await client.send(conv, "do something slow")  # the demo's 3 s sleep tool
    await client.wait_for(lambda f: f.get("event") == "agent:tool-calling", 60)
    busy = [b for b in two_bridges.bridges if turns_running(b) > 0]
    assert len(busy) == 1
    bridge = busy[0]
    started = asyncio.get_running_loop().time()
    await asyncio.to_thread(bridge.process.stop, 30.0)  # SIGTERM
    assert asyncio.get_running_loop().time() - started < 20
    # uvicorn re-raises SIGTERM after its graceful shutdown: -15 after a complete shutdown.
    assert bridge.process.proc is not None and bridge.process.proc.returncode in (0, -15)
    assert "Application shutdown complete" in bridge.process.tail(20)
    final = await client.answer(user, seconds=60)
    await asyncio.sleep(1.0)
    msgs = client.turn_messages(user)
    assert [(m["role"], m["messageType"]) for m in msgs] == [
        ("assistant", "tool_call"),
        ("tool", "tool_result"),
        ("assistant", "text"),
    ], msgs
    assert final["finishReason"] == "stop"
    bridge.process.start()
    await asyncio.to_thread(two_bridges.wait_ready, bridge)


async def test_with_no_replica_left_the_turn_fails_visibly_within_10_s(
    tmp_path: Path, stack_factory: StartStack, connect: Connect
) -> None:
    """Issue 11: the only bridge replica is killed mid-turn: within 10 s the members see the
    offline notice (a stored system error tied to the turn) and agent:offline, not silence;
    the turn stays queued and a replica that comes back answers it."""
    stack = stack_factory(tmp_path)
    try:
        client = await connect(stack)
        conv = await client.conversation("agent-demo")
        user = await client.send(conv, "do something slow")  # the demo's 3 s sleep tool
        await client.wait_for(lambda f: f.get("event") == "agent:tool-calling", 60)
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        stack.bridges[0].process.kill()
        notice = await client.wait_for(
            lambda f: (
                f.get("event") == "message:new"
                and f["data"].get("parentMessageId") == user["_id"]
                and f["data"].get("messageType") == "error"
            ),
            15,
        )
        took = loop.time() - killed_at
        assert took < 10.0, f"the failure showed {took:.1f} s after the kill"
        assert notice["data"]["role"] == "system" and "offline" in notice["data"]["content"]
        await client.wait_for(
            lambda f: f.get("event") == "agent:offline" and f.get("conversationId") == conv, 3
        )
        # A replica that comes back answers the queued turn (the notice is not an answer).
        stack.bridges[0].process.start()
        await asyncio.to_thread(stack.wait_ready, stack.bridges[0])
        final = await client.answer(user, seconds=60)
        assert final["role"] == "assistant" and final["messageType"] == "text"
    finally:
        stack.stop()
