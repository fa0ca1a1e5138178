"""The deterministic offline demo backend (agent ``agent-demo``).

No network, no model: the answer depends only on the conversation. It walks through every
message type with the real tools of :mod:`parley_agent_bridge.demo_tools`:

- a prompt mentioning *search* → ``tool_call`` web_search → ``tool_result`` → summary;
- *calc* / *math* → calculator; *fail* → rate_limited_api (a failed tool, answered
  gracefully); *search* with *calc* (or *parallel*) → two tool calls at once;
- *slow* → the ``sleep`` tool (try ``message:stop``);
- *backend error* → the backend fails (an ``error`` message);
- attachments → a description of what it received (image type, size and dimensions, a text
  file's name, lines and first line; see :func:`describe_files`);
- anything else → reasoning (a ``thinking`` message) and a streamed text answer.

The bridge's housekeeping prompts (:mod:`parley_agent_bridge.housekeeping`) get a title made
of the first user message's first words, and a context derived from the words used.
"""

from __future__ import annotations

import asyncio
import base64
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
from parley_agent_bridge.files import text_of
from parley_agent_bridge.housekeeping import CONTEXT_INSTRUCTIONS, TITLE_INSTRUCTIONS

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
        prompt_tokens = sum(estimate_tokens(text_of(m.get("content"))) for m in messages)
        system = str(messages[0].get("content") or "") if messages else ""
        if system in (TITLE_INSTRUCTIONS, CONTEXT_INSTRUCTIONS) and len(messages) == 2:
            text = str(messages[1].get("content") or "")
            out = demo_title(text) if system == TITLE_INSTRUCTIONS else demo_context(text)
            await self._pace()
            yield TextDelta(out)
            yield Finish("stop", TokenUsage(prompt_tokens, estimate_tokens(out)))
            return
        last_user = next(
            (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"),
            -1,
        )
        content = messages[last_user].get("content") if last_user >= 0 else ""
        question = _question(content)
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

        if isinstance(content, list) and describe_files(content):
            answer = describe_files(content)
            for word in _words(answer):
                await self._pace()
                yield TextDelta(word)
            yield Finish("stop", TokenUsage(prompt_tokens, estimate_tokens(answer)))
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


_STOPWORDS = frozenset(
    [
        "about",
        "after",
        "again",
        "also",
        "because",
        "been",
        "before",
        "being",
        "could",
        "does",
        "doing",
        "from",
        "have",
        "having",
        "here",
        "just",
        "like",
        "more",
        "most",
        "much",
        "only",
        "other",
        "over",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "very",
        "what",
        "when",
        "where",
        "which",
        "while",
        "with",
        "would",
        "your",
        "yours",
        "hello",
        "please",
        "thanks",
        "thank",
    ]
)
_POSITIVE = frozenset(
    ["good", "great", "thanks", "thank", "love", "nice", "excellent", "happy", "glad", "awesome"]
)
_NEGATIVE = frozenset(
    ["bad", "hate", "fail", "failed", "error", "wrong", "broken", "angry", "sad", "terrible"]
)


def _said(transcript: str, role: str = "User") -> list[str]:
    prefix = f"{role}: "
    return [line[len(prefix) :] for line in transcript.splitlines() if line.startswith(prefix)]


def demo_title(transcript: str) -> str:
    """The first user message's first six words, capitalized ("Conversation" if none)."""
    said = _said(transcript)
    words = re.findall(r"[\w'-]+", said[0]) if said else []
    title = " ".join(words[:6])
    return title[:1].upper() + title[1:] if title else "Conversation"


def demo_context(transcript: str) -> str:
    """A context as JSON: counts for the summary, capitalized words as entities, the most
    used long words as topics, and a sentiment from a few words."""
    said = _said(transcript)
    answers = _said(transcript, "Assistant")
    words = [w for line in said for w in re.findall(r"[\w'-]+", line)]
    lowered = [w.lower() for w in words]
    entities = list(dict.fromkeys(w for w in words[1:] if w[:1].isupper() and len(w) > 1))[:5]
    counts: dict[str, int] = {}
    for w in lowered:
        if len(w) >= 5 and w not in _STOPWORDS:
            counts[w] = counts.get(w, 0) + 1
    topics = sorted(counts, key=lambda w: (-counts[w], lowered.index(w)))[:3]
    positive = sum(w in _POSITIVE for w in lowered)
    negative = sum(w in _NEGATIVE for w in lowered)
    sentiment = (
        "positive" if positive > negative else "negative" if negative > positive else "neutral"
    )
    first = " ".join(said[0].split()[:12]) if said else ""
    summary = f'{len(said)} user messages and {len(answers)} answers. It began with: "{first}".'
    return json.dumps(
        {"summary": summary, "entities": entities, "topics": topics, "sentiment": sentiment}
    )


def _question(content: Any) -> str:
    """The user's own words: the text parts that are not attached files."""
    if isinstance(content, list):
        return " ".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, dict)
            and p.get("type") == "text"
            and not str(p.get("text") or "").startswith("[attached ")
        ).strip()
    return str(content or "")


def _image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or GIF header (no image library needed)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    return None


def describe_files(parts: list[Any]) -> str:
    """What the demo agent says about the files of a message ("" when there are none)."""
    seen: list[str] = []
    for p in parts:
        if not isinstance(p, dict):
            continue
        if p.get("type") == "image_url":
            url = str((p.get("image_url") or {}).get("url") or "")
            head, _, b64 = url.partition(",")
            mime = head.removeprefix("data:").removesuffix(";base64")
            try:
                data = base64.b64decode(b64, validate=True)
            except ValueError:
                data = b""
            dims = _image_size(data)
            size = f", {dims[0]}x{dims[1]} pixels" if dims else ""
            seen.append(f"an image ({mime}, {len(data)} bytes{size})")
            continue
        text = str(p.get("text") or "")
        if not text.startswith("[attached "):
            continue
        first, _, body = text.partition("\n")
        label = first.strip("[]").removeprefix("attached ")
        if body:
            lines = body.splitlines()
            seen.append(f'{label}: {len(lines)} lines, starting "{lines[0][:60]}"')
        else:
            seen.append(label)
    if not seen:
        return ""
    listed = "; ".join(seen)
    n = len(seen)
    return f"I received {n} file{'s' if n > 1 else ''}: {listed}."
