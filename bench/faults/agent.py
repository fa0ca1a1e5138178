"""An agent turn killed mid-way, on the demo agent (``agent-demo``, offline).

One more user opens a conversation with ``agent-demo`` and asks it either to "do something
slow" (a tool call, the 3 s ``sleep`` tool, an answer; killed while the tool runs, i.e.
``agent:tool-calling`` seen) or just "hello" (a streamed thinking step, then a streamed
answer; killed at the answer's ``message:stream-start``, while it streams). The bridge
killed is the replica running the turn (``parley_agent_bridge_turns_running`` > 0).
Measured from the kill: when the answer (``message:new`` text) arrived, when the first
visible sign did (``agent:thinking``, a stream, ``agent:offline``, an ``error`` message),
which steps the store has for the turn (each must be there once), and whether every
``message:stream-start`` got its ``message:stream-end``.
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
        self.trigger_at = 0.0  # when the frame the kill waits for arrived

    async def start(self, mode: str) -> str:
        """Ask the demo agent; return the bridge running the turn once the turn is where
        ``mode`` kills it: ``tool`` (the 3 s sleep tool is running) or ``stream`` (the
        thinking step is stored, the answer has started streaming)."""
        await self.client.connect()
        reply = await self.client.call(
            Event.CONVERSATION_CREATE.value, {"title": "faults agent turn", "agentId": AGENT_ID}
        )
        if not reply.get("success"):
            raise RuntimeError(f"agent conversation: {reply}")
        self.conv = str(reply["data"]["_id"])
        await self.client.join(self.conv)
        prompt = "please do something slow" if mode == "tool" else "hello, who are you?"
        busy = asyncio.create_task(self.busy_bridge())  # found while the turn runs
        sent = await self.client.send(self.conv, prompt, "faults-agent-q1")
        if sent.message_id is None:
            busy.cancel()
            raise RuntimeError(f"the question was not acked: {sent.errors}")
        self.user_msg_id = sent.message_id
        if mode == "tool":
            trigger = await self._wait(
                lambda f: f.get("event") == Event.AGENT_TOOL_CALLING.value, 60
            )
        else:
            trigger = await self._wait(self._answer_streaming, 60)
        name = await busy
        if trigger is None:
            raise RuntimeError(f"the demo agent's turn never reached the {mode} step")
        self.trigger_at = float(trigger["_at"])
        return name

    def _answer_streaming(self, frame: dict[str, Any]) -> bool:
        data = frame.get("data") or {}
        return (
            frame.get("event") == Event.MESSAGE_STREAM_START.value
            and data.get("parentMessageId") == self.user_msg_id
        )

    async def busy_bridge(self) -> str:
        """The bridge replica running the turn (polled from the moment the question goes)."""
        names = [b.name for b in self.fs.stack.bridges]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for name in names:
                if await asyncio.to_thread(self.fs.turns_running, name) > 0:
                    return name
            await asyncio.sleep(0.01)
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
        starts = Counter(
            (f.get("data") or {}).get("streamId")
            for f in self.client.frames
            if f.get("event") == Event.MESSAGE_STREAM_START.value and self._ours(f)
        )
        ends = Counter(
            (f.get("data") or {}).get("streamId")
            for f in self.client.frames
            if f.get("event") == Event.MESSAGE_STREAM_END.value and self._ours(f)
        )
        timeline = [
            [
                round(float(f["_at"]) - self.kill_at, 2),
                str(f.get("event")),
                (f.get("data") or {}).get("messageType")
                or (f.get("data") or {}).get("finishReason"),
                (f.get("data") or {}).get("streamId"),
            ]
            for f in self.client.frames
            if self._ours(f) and f.get("event") != Event.MESSAGE_STREAM_DELTA.value
        ]
        return {
            "timeline": timeline[-40:],
            "killed_after_trigger_s": round(self.kill_at - self.trigger_at, 2),
            "answered_before_kill": answer is not None and float(answer["_at"]) < self.kill_at,
            "answered_s": _since(answer, self.kill_at),
            "answer_type": (answer or {}).get("data", {}).get("messageType"),
            "first_sign_s": _since(signs[0] if signs else None, self.kill_at),
            "failure_visible_s": _since(failures[0] if failures else None, self.kill_at),
            "steps": dict(steps),
            "steps_stored_twice": sum(n - 1 for n in steps.values() if n > 1),
            "stream_starts": sum(starts.values()),
            "stream_ends": sum(ends[k] for k in starts),
            # ends of streams this client never saw start (or ended twice): odd, not counted
            # as a failure
            "stream_ends_extra": sum((ends - starts).values()),
            "streams_not_ended": sum((starts - ends).values()),
        }

    async def close(self) -> None:
        await self.client.close()


def _since(frame: dict[str, Any] | None, t0: float) -> float | None:
    return None if frame is None else round(float(frame["_at"]) - t0, 2)


def verdict(result: dict[str, Any]) -> list[str]:
    why: list[str] = []
    if result["answered_before_kill"]:
        return ["the turn had ended before the kill: nothing measured (run it again)"]
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
