"""An agent turn killed mid-way: the demo agent's *slow* turn (a 3 s ``sleep`` tool).

One more user opens a conversation with ``agent-demo`` and asks it to "do something slow";
when the tool is running (``agent:tool-calling`` seen), the bridge replica running the turn
(``parley_agent_bridge_turns_running`` > 0) is the one killed. Measured from the kill:
when the answer (``message:new`` text) arrived, when the first visible sign did
(``agent:thinking``, a stream, ``agent:offline``, an ``error`` message), which steps the
store has for the turn (each must be there once), and whether every ``message:stream-start``
got its ``message:stream-end``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from bench.faults.clients import LoadClient
from bench.faults.harness import FaultStack
from bench.faults.workload import read_history
from parley_contract.auth import mint_token
from parley_contract.events import Event

AGENT_ID = "agent-demo"
LIMIT_SECONDS = 10.0
WAIT_SECONDS = 45.0  # long enough to see when a late answer comes
SIGNS = {
    Event.AGENT_THINKING.value,
    Event.AGENT_TOOL_CALLING.value,
    Event.AGENT_OFFLINE.value,
    Event.MESSAGE_STREAM_START.value,
    Event.MESSAGE_NEW.value,
}


class AgentTurn:
    def __init__(self, fs: FaultStack, ws_urls: list[str]) -> None:
        self.fs = fs
        user = "faults-agent-user"
        self.client = LoadClient(user, mint_token(user, ttl_seconds=3600), ws_urls, 1)
        self.conv = ""
        self.user_msg_id = ""
        self.kill_at = 0.0
        self.tool_calling_at = 0.0

    async def start(self) -> None:
        await self.client.connect()
        reply = await self.client.call(
            Event.CONVERSATION_CREATE.value, {"title": "faults agent turn", "agentId": AGENT_ID}
        )
        if not reply.get("success"):
            raise RuntimeError(f"agent conversation: {reply}")
        self.conv = str(reply["data"]["_id"])
        await self.client.join(self.conv)
        sent = await self.client.send(self.conv, "please do something slow", "faults-agent-q1")
        if sent.message_id is None:
            raise RuntimeError(f"the question was not acked: {sent.errors}")
        self.user_msg_id = sent.message_id
        calling = await self._wait(lambda f: f.get("event") == Event.AGENT_TOOL_CALLING.value, 60)
        if calling is None:
            raise RuntimeError("the demo agent never called its tool")
        self.tool_calling_at = float(calling["_at"])

    async def busy_bridge(self) -> str:
        """The bridge replica running the turn now."""
        names = [b.name for b in self.fs.stack.bridges]
        for _ in range(50):
            for name in names:
                if await asyncio.to_thread(self.fs.turns_running, name) > 0:
                    return name
            await asyncio.sleep(0.1)
        raise RuntimeError("no bridge reports a running turn")

    def killed(self, at: float) -> None:
        self.kill_at = at

    def _ours(self, frame: dict[str, Any]) -> bool:
        data = frame.get("data") or {}
        return frame.get("conversationId", data.get("conversationId")) == self.conv

    async def _wait(self, pred: Any, seconds: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for frame in self.client.frames:
                if self._ours(frame) and pred(frame):
                    return frame
            self.client.changed.clear()
            try:
                await asyncio.wait_for(self.client.changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return None

    def _answer(self, frame: dict[str, Any]) -> bool:
        data = frame.get("data") or {}
        return (
            frame.get("event") == Event.MESSAGE_NEW.value
            and data.get("parentMessageId") == self.user_msg_id
            and data.get("role") == "assistant"
            and data.get("messageType") in ("text", "error")
        )

    async def finish(self, http_urls: list[str]) -> dict[str, Any]:
        left = max(0.0, self.kill_at + WAIT_SECONDS - time.monotonic())
        answer = await self._wait(self._answer, left)
        after = [f for f in self.client.frames if self._ours(f) and f["_at"] > self.kill_at]
        signs = [f for f in after if f.get("event") in SIGNS]
        failures = [
            f
            for f in after
            if f.get("event") == Event.AGENT_OFFLINE.value
            or (self._answer(f) and (f.get("data") or {}).get("messageType") == "error")
        ]
        history = await read_history(http_urls, self.client.token, self.conv)
        steps = Counter(
            str(m.get("messageType"))
            for m in history
            if m.get("parentMessageId") == self.user_msg_id
        )
        starts = {
            (f.get("data") or {}).get("streamId")
            for f in self.client.frames
            if f.get("event") == Event.MESSAGE_STREAM_START.value and self._ours(f)
        }
        ends = {
            (f.get("data") or {}).get("streamId")
            for f in self.client.frames
            if f.get("event") == Event.MESSAGE_STREAM_END.value
        }
        return {
            "killed_after_tool_call_s": round(self.kill_at - self.tool_calling_at, 2),
            "answered_s": _since(answer, self.kill_at),
            "answer_type": (answer or {}).get("data", {}).get("messageType"),
            "first_sign_s": _since(signs[0] if signs else None, self.kill_at),
            "failure_visible_s": _since(failures[0] if failures else None, self.kill_at),
            "steps": dict(steps),
            "steps_stored_twice": sum(n - 1 for n in steps.values() if n > 1),
            "streams_started": len(starts),
            "streams_not_ended": len(starts - ends),
        }

    async def close(self) -> None:
        await self.client.close()


def _since(frame: dict[str, Any] | None, t0: float) -> float | None:
    return None if frame is None else round(float(frame["_at"]) - t0, 2)


def verdict(result: dict[str, Any]) -> list[str]:
    why: list[str] = []
    answered = result["answered_s"]
    visible = result["failure_visible_s"]
    done_in_time = answered is not None and answered <= LIMIT_SECONDS
    failed_visibly = visible is not None and visible <= LIMIT_SECONDS
    if not (done_in_time or failed_visibly):
        seen = "never" if answered is None else f"after {answered} s"
        why.append(f"turn neither answered nor failed visibly within 10 s (answered {seen})")
    if result["steps_stored_twice"]:
        why.append(f"{result['steps_stored_twice']} turn steps stored twice {result['steps']}")
    if result["streams_not_ended"]:
        why.append(f"{result['streams_not_ended']} agent streams never ended")
    return why
