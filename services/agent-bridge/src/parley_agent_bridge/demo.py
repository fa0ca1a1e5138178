"""The deterministic offline demo backend (agent ``agent-demo``).

No network, no model: the answer depends only on the conversation. It walks through every
message type with the real tools of :mod:`parley_agent_bridge.demo_tools`:

- a prompt mentioning *search* → ``tool_call`` web_search → ``tool_result`` → summary;
- *calc* / *math* → calculator; *fail* → rate_limited_api (a failed tool, answered
  gracefully); *search* with *calc* (or *parallel*) → two tool calls at once;
- *slow* → the ``sleep`` tool (try ``message:stop``);
- *backend error* → the backend fails (an ``error`` message);
- anything else → reasoning (a ``thinking`` message) and a streamed text answer.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from parley_agent_bridge.backends import (
    BackendError,
    ChatMessage,
    Finish,
    ModelEvent,
    ModelToolCall,
    ReasoningDelta,
    TextDelta,
    TokenUsage,
    ToolCalls,
    ToolSpec,
    estimate_tokens,
)

_EXPR = re.compile(r"[-+*/().%\d\s]{3,}")


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


class ScriptedDemoBackend:
    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay

    async def _pace(self) -> None:
        if self.delay > 0:
            await asyncio.sleep(self.delay)

    async def stream(
        self, messages: list[ChatMessage], tools: list[ToolSpec]
    ) -> AsyncIterator[ModelEvent]:
        prompt_tokens = sum(estimate_tokens(str(m.get("content") or "")) for m in messages)
        last_user = next(
            (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"),
            -1,
        )
        question = str(messages[last_user].get("content") or "") if last_user >= 0 else ""
        lowered = question.lower()
        results = [m for m in messages[last_user + 1 :] if m.get("role") == "tool"]
        tool_names = {t["function"]["name"] for t in tools}

        if "backend error" in lowered:
            raise BackendError("demo backend: simulated model backend failure")

        if results:
            answer = _summarize(results)
            for word in _words(answer):
                await self._pace()
                yield TextDelta(word)
            yield Finish("stop", TokenUsage(prompt_tokens, estimate_tokens(answer)))
            return

        calls: list[tuple[str, dict[str, Any]]] = []
        if "search" in lowered and "web_search" in tool_names:
            calls.append(("web_search", {"query": question, "limit": 3}))
        if ("calc" in lowered or "math" in lowered) and "calculator" in tool_names:
            match = _EXPR.search(question)
            expr = match.group(0).strip() if match else "6 * 7"
            calls.append(("calculator", {"expression": expr}))
        if "fail" in lowered and "rate_limited_api" in tool_names:
            calls.append(("rate_limited_api", {"query": question}))
        if "slow" in lowered and "sleep" in tool_names:
            calls.append(("sleep", {"seconds": 3}))
        if "parallel" in lowered and len(calls) == 1 and "calculator" in tool_names:
            calls.append(("calculator", {"expression": "6 * 7"}))

        if calls:
            intro = {
                "web_search": "I'll search for that.",
                "calculator": "Let me calculate that.",
                "rate_limited_api": "Let me query the external API.",
                "sleep": "This will take a moment.",
            }[calls[0][0]]
            for word in _words(intro):
                await self._pace()
                yield TextDelta(word)
            yield ToolCalls(
                [
                    ModelToolCall(
                        f"call_demo_{len(messages)}_{i}", name, json.dumps(args, sort_keys=True)
                    )
                    for i, (name, args) in enumerate(calls)
                ]
            )
            yield Finish("tool_calls", TokenUsage(prompt_tokens, estimate_tokens(intro) + 10))
            return

        reasoning = (
            f"The user wrote {len(question)} characters. No tool is needed; "
            "I'll answer directly and mention what the demo can do."
        )
        for word in _words(reasoning):
            await self._pace()
            yield ReasoningDelta(word)
        answer = (
            f'Hello! I am the Parley demo agent, running offline. You said: "{question}". '
            "Ask me to search the news, to calculate 12 * 7, to call a failing API, "
            "or to do something slow (then stop me)."
        )
        for word in _words(answer):
            await self._pace()
            yield TextDelta(word)
        yield Finish(
            "stop",
            TokenUsage(prompt_tokens, estimate_tokens(reasoning) + estimate_tokens(answer)),
        )


def _summarize(results: list[ChatMessage]) -> str:
    parts: list[str] = []
    for msg in results:
        try:
            payload = json.loads(str(msg.get("content") or "null"))
        except json.JSONDecodeError:
            payload = msg.get("content")
        if isinstance(payload, dict) and payload.get("success") is False:
            parts.append(
                "I apologize, but the tool failed: "
                f"{payload.get('error')}. I can answer from what I already know instead."
            )
            continue
        value = payload.get("result") if isinstance(payload, dict) else payload
        if isinstance(value, dict) and isinstance(value.get("articles"), list):
            lines = [
                f"{i}. **{a.get('title')}** - {a.get('summary')}"
                for i, a in enumerate(value["articles"], 1)
                if isinstance(a, dict)
            ]
            parts.append("Here are the top results:\n\n" + "\n".join(lines))
        elif isinstance(value, dict) and "result" in value:
            parts.append(f"{value.get('expression')} = {value['result']}.")
        elif isinstance(value, dict) and "slept" in value:
            parts.append(f"Done after {value['slept']:g} seconds.")
        else:
            parts.append(f"The tool returned: {json.dumps(value)[:500]}")
    return "\n\n".join(parts)
