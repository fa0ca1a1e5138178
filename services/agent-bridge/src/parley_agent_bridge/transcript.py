"""Between the store and the model: stored Parley messages as OpenAI chat messages, and a
tool's outcome as the store and the model take it (bounded, storable)."""

from __future__ import annotations

import json
from typing import Any

from parley_agent_bridge.backends import ChatMessage
from parley_contract.limits import MAX_CONTENT_CHARS, is_storable_free_form
from parley_contract.models import MessageType, Role

MAX_RESULT_CHARS = 32_000  # a stored tool result; larger ones are kept as truncated JSON text
INTERRUPTED = "interrupted: the bridge replica running this turn stopped before the result"


def clip(text: str, limit: int = MAX_CONTENT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 12] + " [truncated]"


def storable_result(value: Any) -> Any:
    """A tool result as the store accepts it: big, deep, odd-keyed results or numbers the
    store cannot hold (integers beyond 64 bits, NaN) become JSON text."""
    text = json.dumps(value, default=str)
    if len(text) > MAX_RESULT_CHARS:
        return clip(text, MAX_RESULT_CHARS)
    if not is_storable_free_form(value):  # the contract's limits (parley_contract.limits)
        return text
    return value


def tool_content(ok: bool, result: Any, error: str | None) -> str:
    """A tool result as the model reads it (bounded)."""
    return clip(json.dumps({"success": ok, "result": result, "error": error}, default=str), 100_000)


def chat_history(
    system_prompt: str,
    stored: list[dict[str, Any]],
    attachments: dict[str, list[dict[str, Any]]] | None = None,
) -> list[ChatMessage]:
    """Stored Parley messages (wire JSON, seq order) as OpenAI chat messages.

    ``attachments``: message id → content parts (parley_agent_bridge.files); a user message
    with some becomes a list of parts (its text first).

    Thinking, error and system messages are left out; consecutive ``tool_call`` messages
    become one assistant message; a tool call without a stored result gets a synthetic one
    (the API requires an answer for every call id).
    """
    out: list[ChatMessage] = [{"role": "system", "content": system_prompt}]
    pending: list[str] = []

    def close_pending() -> None:
        for call_id in pending:
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": tool_content(False, None, INTERRUPTED),
                }
            )
        pending.clear()

    for msg in stored:
        if msg.get("deletedAt"):
            continue
        role = msg.get("role")
        mtype = msg.get("messageType", "text")
        content = str(msg.get("content") or "")
        if role == Role.TOOL and mtype == MessageType.TOOL_RESULT:
            for res in msg.get("toolResults") or []:
                call_id = res.get("toolCallId")
                if call_id in pending:
                    pending.remove(call_id)
                    out.append(
                        {
                            "role": "tool",
                            "tool_call_id": call_id,
                            "content": tool_content(
                                bool(res.get("success")), res.get("result"), res.get("error")
                            ),
                        }
                    )
            continue
        if role == Role.ASSISTANT and mtype == MessageType.TOOL_CALL:
            calls = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": c["function"].get("arguments") or "{}",
                    },
                }
                for c in msg.get("toolCalls") or []
                if isinstance(c, dict) and "id" in c and "function" in c
            ]
            if not calls:
                continue
            prev = out[-1]
            if prev.get("role") == "assistant" and prev.get("tool_calls") and pending:
                prev["tool_calls"].extend(calls)
                if content and not prev.get("content"):
                    prev["content"] = content
            else:
                close_pending()
                out.append({"role": "assistant", "content": content or None, "tool_calls": calls})
            pending.extend(c["id"] for c in calls)
            continue
        close_pending()
        if mtype != MessageType.TEXT:
            continue
        if role == Role.USER:
            parts = (attachments or {}).get(str(msg.get("_id")))
            if parts:
                text = [{"type": "text", "text": content}] if content else []
                out.append({"role": "user", "content": [*text, *parts]})
            else:
                out.append({"role": "user", "content": content})
        elif role == Role.ASSISTANT and content:
            out.append({"role": "assistant", "content": content})
    close_pending()
    return out
