"""What the browser tests check a page against (test_chat_page.py, test_chat_gateways.py):
the messages it shows, the stored history, and another user's messages sent meanwhile."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import websockets.sync.client

from .conftest import MESSAGES, System


def shown(page: Any) -> list[dict[str, Any]]:
    """The messages the page shows, by seq (a tool result is shown inside its call, so the
    page's top-to-bottom order puts each result right after its call); unsent ones last."""
    rows: list[dict[str, Any]] = page.eval_on_selector_all(
        MESSAGES,
        """els => els.map(e => ({id: e.dataset.messageId, type: e.dataset.messageType,
                                 role: e.dataset.role, seq: Number(e.dataset.seq || 0)}))""",
    )
    return sorted(rows, key=lambda r: r["seq"] or float("inf"))


def assert_same_as_stored(system: System, page: Any, cid: str, sub: str = "user-1") -> None:
    """The page shows exactly the stored history: nothing twice, nothing missing, in order."""
    deadline = time.monotonic() + 10
    while True:
        stored = [m["_id"] for m in system.history(cid, sub)]
        ids = [m["id"] for m in shown(page)]
        assert len(ids) == len(set(ids)), f"a message is shown twice: {ids}"
        if ids == stored:
            return
        if time.monotonic() > deadline:
            assert ids == stored, "the page must show exactly the stored history"
        time.sleep(0.2)


def send_as(system: System, sub: str, gateway: int, cid: str, texts: list[str]) -> None:
    """Post messages from a plain WebSocket client (another user on another gateway)."""
    url = system.stack.ws_url(gateway) + "?access_token=" + system.token(sub)
    with websockets.sync.client.connect(url, open_timeout=10) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["event"] == "connected"
        batch = uuid.uuid4().hex[:8]
        for i, text in enumerate(texts):
            command = {
                "event": "message:send",
                "id": f"s{i}",
                "data": {"conversationId": cid, "content": text, "clientMessageId": f"{batch}-{i}"},
            }
            # A well-behaved client: on RATE_LIMITED it waits and retries the same message
            # (the clientMessageId makes the retry safe).
            for _attempt in range(20):
                ws.send(json.dumps(command))
                while True:
                    frame = json.loads(ws.recv(timeout=10))
                    if frame.get("id") == f"s{i}":
                        break
                if frame["success"] or frame["error"]["code"] != "RATE_LIMITED":
                    break
                time.sleep(0.5)
            assert frame["success"], frame
