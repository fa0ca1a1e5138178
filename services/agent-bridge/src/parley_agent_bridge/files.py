"""Attachments as the model reads them (issue 17).

The bytes come from the same store the gateways write (parley_runtime.filestore), by
attachment id; the message's attachment objects say name, type and size. For each user
message of the history that carries attachments:

- images (PNG, JPEG, GIF, WebP) become OpenAI ``image_url`` parts with a ``data:`` URL when
  the agent's model takes images (``vision: true`` in the agents file; the demo agent does),
  else a line saying an image was attached;
- text files (``text/*``, JSON) become text parts with their content (bounded);
- anything else (a PDF...) becomes a line naming the file.

Budgets keep a long history cheap: the newest images first, up to ``MAX_IMAGE_BYTES`` in all
and ``MAX_IMAGE_BYTES_EACH`` each; text up to ``MAX_TEXT_CHARS`` per file. A file the store
no longer has (deleted meanwhile) becomes a line saying so, never a failed turn.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from parley_contract.attachments import INLINE_TYPES
from parley_runtime.filestore import FileStore, Missing

logger = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_BYTES_EACH = 5 * 1024 * 1024
MAX_TEXT_CHARS = 20_000
TEXT_TYPES = ("text/", "application/json")

Part = dict[str, Any]


def _is_text(mime: str) -> bool:
    return mime.startswith(TEXT_TYPES)


def _describe(a: dict[str, Any]) -> str:
    return f"{a.get('filename')} ({a.get('mimeType')}, {a.get('size')} bytes)"


async def _read(store: FileStore, key: str, limit: int) -> bytes:
    chunks = [c async for c in store.read(key, 0, max(0, limit - 1))]
    return b"".join(chunks)


async def model_parts(
    history: list[dict[str, Any]], store: FileStore | None, *, vision: bool
) -> dict[str, list[Part]]:
    """Message id → the content parts its attachments add (user messages only)."""
    out: dict[str, list[Part]] = {}
    image_budget = MAX_IMAGE_BYTES
    for msg in reversed(history):  # newest first: they get the image budget
        atts = msg.get("attachments")
        if msg.get("role") != "user" or msg.get("deletedAt") or not isinstance(atts, list):
            continue
        parts: list[Part] = []
        for a in atts:
            if not isinstance(a, dict) or not isinstance(a.get("id"), str):
                continue
            mime, size = str(a.get("mimeType") or ""), int(a.get("size") or 0)
            part = await _part(store, a, mime, size, vision=vision, budget=image_budget)
            if part.get("type") == "image_url":
                image_budget -= size
            parts.append(part)
        if parts and isinstance(msg.get("_id"), str):
            out[msg["_id"]] = parts
    return out


async def _part(
    store: FileStore | None,
    a: dict[str, Any],
    mime: str,
    size: int,
    *,
    vision: bool,
    budget: int,
) -> Part:
    name = _describe(a)
    wants_image = mime in INLINE_TYPES
    wants_text = _is_text(mime)
    if store is None or not (wants_image or wants_text):
        return {"type": "text", "text": f"[attached file: {name}]"}
    if wants_image and not vision:
        return {"type": "text", "text": f"[attached image: {name}; this model cannot see it]"}
    if wants_image and (size > MAX_IMAGE_BYTES_EACH or size > budget):
        return {"type": "text", "text": f"[attached image: {name}; too large to show the model]"}
    try:
        data = await _read(store, a["id"], size if wants_image else MAX_TEXT_CHARS * 4)
    except Missing:
        return {"type": "text", "text": f"[attached file: {name}; no longer available]"}
    if wants_image:
        url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        return {"type": "image_url", "image_url": {"url": url}}
    text = data.decode("utf-8", errors="replace")[:MAX_TEXT_CHARS]
    cut = " (truncated)" if size > len(data) or len(text) == MAX_TEXT_CHARS else ""
    return {"type": "text", "text": f"[attached file: {name}{cut}]\n{text}"}


def text_of(content: Any) -> str:
    """The text of a chat message's content: a string, or the text parts of a list."""
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return str(content or "")
