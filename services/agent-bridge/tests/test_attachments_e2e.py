"""Issue 17: attachments reach the model, end to end (gateway upload, conversation service,
agent bridge reading the bytes from GridFS in the embedded store, NATS).

- a vision-capable scripted backend (the OpenAI-compatible stub) gets the image as an
  ``image_url`` part with the very bytes uploaded, and a text file as text;
- a backend that takes no images is told an image was attached, without the bytes;
- the demo agent describes what it received.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from parley_agent_bridge.openai_stub import OpenAIStub, Step
from parley_client.testing import WsClient, png
from parley_devstack.stack import Stack

LLM_AGENT = "agent-llm"  # configured by conftest.agents_file
VISION_AGENT = "agent-vision"  # the same, with vision: true
Connect = Callable[..., Awaitable[WsClient]]
pytestmark = pytest.mark.timeout(180)


async def send(client: WsClient, cid: str, text: str, ids: list[str]) -> dict[str, Any]:
    msg = await client.client.send_message(cid, text, attachments=ids)
    return msg.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _user_parts(request: dict[str, Any]) -> list[dict[str, Any]]:
    user = [m for m in request["messages"] if m.get("role") == "user"][-1]
    content = user["content"]
    assert isinstance(content, list), content
    return content


async def test_image_reaches_a_vision_backend(
    stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    openai_stub.script("look-vision-e2e", Step(content=["A grey ", "square."]))
    client = await connect(stack)
    cid = await client.conversation(VISION_AGENT)
    image = png(7, 5)
    notes = b"first line\nsecond line\n"
    img = await client.upload(cid, image, filename="square.png", ctype="image/png")
    txt = await client.upload(cid, notes, filename="notes.txt", ctype="text/plain")
    before = len(openai_stub.requests)
    user = await send(client, cid, "look-vision-e2e at these", [img["id"], txt["id"]])
    final = await client.answer(user)
    assert final["content"] == "A grey square."

    request = next(r for r in openai_stub.requests[before:] if r["model"] == "scripted-vision-1")
    parts = _user_parts(request)
    assert parts[0] == {"type": "text", "text": "look-vision-e2e at these"}
    image_parts = [p for p in parts if p["type"] == "image_url"]
    assert len(image_parts) == 1
    url = image_parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == image  # the very bytes uploaded
    text_parts = [p["text"] for p in parts[1:] if p["type"] == "text"]
    assert text_parts == [
        f"[attached file: notes.txt (text/plain, {len(notes)} bytes)]\nfirst line\nsecond line\n"
    ]


async def test_a_model_without_vision_is_told_not_shown(
    stack: Stack, openai_stub: OpenAIStub, connect: Connect
) -> None:
    openai_stub.script("blind-e2e", Step(content=["I cannot see it."]))
    client = await connect(stack)
    cid = await client.conversation(LLM_AGENT)
    img = await client.upload(cid, png(2, 2), filename="tiny.png", ctype="image/png")
    before = len(openai_stub.requests)
    user = await send(client, cid, "blind-e2e", [img["id"]])
    await client.answer(user)
    request = next(r for r in openai_stub.requests[before:] if r["model"] == "scripted-1")
    parts = _user_parts(request)
    assert all(p["type"] == "text" for p in parts)
    assert "[attached image: tiny.png (image/png" in parts[1]["text"]
    assert "cannot see it" in parts[1]["text"]


async def test_demo_agent_describes_what_it_received(stack: Stack, connect: Connect) -> None:
    client = await connect(stack)
    cid = await client.conversation("agent-demo")
    img = await client.upload(cid, png(12, 9), filename="chart.png", ctype="image/png")
    csv = await client.upload(
        cid, b"city,temp\nParis,21\nOslo,12\n", filename="t.csv", ctype="text/csv"
    )
    pdf = await client.upload(
        cid, b"%PDF-1.4 not really", filename="r.pdf", ctype="application/pdf"
    )
    user = await send(client, cid, "", [img["id"], csv["id"], pdf["id"]])
    final = await client.answer(user)
    text = final["content"]
    assert text.startswith("I received 3 files:"), text
    assert "an image (image/png" in text and "12x9 pixels" in text
    assert 't.csv (text/csv, 27 bytes): 3 lines, starting "city,temp"' in text
    assert "r.pdf (application/pdf" in text
