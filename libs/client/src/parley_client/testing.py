"""A test's view of a ParleyClient: frames as the dicts the wire carries, kept for asserts.

End-to-end tests assert on what a client sees; they want the raw frames (to check a field
is absent, a seq, an epoch) and replies they can look at whether they succeeded or not.
This wraps :class:`ParleyClient` (connection, ids, resume, dedupe by seq) instead of
driving a socket of its own. Uploads (``upload_request``, ``png``) are shared by the gateway, agent
bridge and browser tests.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import httpx

from parley_client.client import ParleyClient
from parley_client.subscriptions import Recorder
from parley_contract.errors import ParleyError
from parley_contract.events import Event

FramePredicate = Callable[[dict[str, Any]], bool]


class WsClient:
    """Commands return the reply frame (``success`` true or false); every event is kept."""

    def __init__(self, client: ParleyClient, recorder: Recorder) -> None:
        self.client = client
        self.recorder = recorder

    @classmethod
    async def open(cls, url: str | list[str], token: str) -> WsClient:
        client = ParleyClient(url, token)
        recorder = client.record()  # before connect: the connected frame is kept too
        await client.connect()
        return cls(client, recorder)

    @property
    def token(self) -> str:
        return self.client.token

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [f.raw for f in self.recorder.frames]

    async def wait_for(self, pred: FramePredicate, seconds: float = 30.0) -> dict[str, Any]:
        frame = await self.recorder.wait_for(lambda f: pred(f.raw), seconds)
        return frame.raw

    async def call(self, event: str, data: dict[str, Any], seconds: float = 15.0) -> dict[str, Any]:
        try:
            reply = await self.client.request(event, data, timeout=seconds)
        except ParleyError as exc:
            error = {"code": exc.code.value, "message": exc.message, "details": exc.details}
            return {"event": event, "success": False, "error": error}
        return {"event": event, "success": True, "data": reply}

    async def conversation(self, agent_id: str) -> str:
        """A new conversation with this agent, joined."""
        conv = await self.client.create_conversation(title="test", agent_id=agent_id)
        await self.client.join(conv.id, since_seq=0)
        return conv.id

    async def send(self, conv_id: str, content: str) -> dict[str, Any]:
        msg = await self.client.send_message(conv_id, content)
        return msg.model_dump(mode="json", by_alias=True, exclude_unset=True)

    async def answer(self, user_msg: dict[str, Any], seconds: float = 30.0) -> dict[str, Any]:
        """The final assistant message (text or error) answering a user message."""
        frame = await self.wait_for(
            lambda f: (
                f.get("event") == Event.MESSAGE_NEW
                and f["data"].get("parentMessageId") == user_msg["_id"]
                and f["data"].get("role") == "assistant"
                and f["data"].get("messageType") in ("text", "error")
            ),
            seconds,
        )
        data: dict[str, Any] = frame["data"]
        return data

    def turn_messages(self, user_msg: dict[str, Any]) -> list[dict[str, Any]]:
        """Durable messages of the turn as members saw them, in seq order."""
        msgs = [
            f["data"]
            for f in self.frames
            if f.get("event") == Event.MESSAGE_NEW
            and f["data"].get("parentMessageId") == user_msg["_id"]
        ]
        return sorted(msgs, key=lambda m: m["seq"])

    def events(self, name: str, conv_id: str | None = None) -> list[dict[str, Any]]:
        return [f.raw for f in self.recorder.events(name, conv_id)]

    async def http_get(self, path: str) -> Any:
        return await self.client.http_get(path)

    async def upload(self, cid: str, body: bytes, *, filename: str, ctype: str) -> dict[str, Any]:
        """An attachment uploaded through the current gateway; its record (``id``...)."""
        req = upload_request(
            self.client.http_base, cid, self.token, body, filename=filename, ctype=ctype
        )
        async with httpx.AsyncClient(timeout=15) as http:
            r = await http.send(req)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()["data"]
        return data

    async def close(self) -> None:
        self.recorder.close()
        await self.client.close()


def upload_request(
    base: str,
    cid: str,
    token: str,
    body: bytes,
    *,
    filename: str = "chart.png",
    ctype: str = "image/png",
) -> httpx.Request:
    """``POST /v1/conversations/{cid}/attachments`` as the page's file button sends it
    (docs/protocol.md), for a sync or an async httpx client's ``send``."""
    return httpx.Request(
        "POST",
        f"{base}/v1/conversations/{cid}/attachments",
        params={"filename": filename},
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
    )


def png(width: int = 4, height: int = 3, grey: int = 0x80) -> bytes:
    """A real PNG, ``width`` x ``height`` pixels of one grey (gateways check an upload's
    bytes against its type)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes([grey]) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
