"""Helpers for tests of the agent bridge through a real gateway (a small protocol client)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import websockets

from parley_contract.events import Event


class WsClient:
    """A protocol client: commands with ids, and every frame kept for assertions."""

    def __init__(self, ws: Any, token: str, http_base: str) -> None:
        self.ws = ws
        self.token = token
        self.http_base = http_base
        self.frames: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._n = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
                self._changed.set()

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], seconds: float = 30.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(seconds):
            while True:
                for frame in self.frames:
                    if pred(frame):
                        return frame
                self._changed.clear()
                await self._changed.wait()

    async def call(self, event: str, data: dict[str, Any], seconds: float = 15.0) -> dict[str, Any]:
        self._n += 1
        cid = f"c{self._n}"
        await self.ws.send(json.dumps({"event": event, "id": cid, "data": data}))
        return await self.wait_for(
            lambda f: f.get("id") == cid and f.get("event") == event, seconds
        )

    async def conversation(self, agent_id: str) -> str:
        reply = await self.call(Event.CONVERSATION_CREATE, {"title": "test", "agentId": agent_id})
        assert reply["success"], reply
        conv_id: str = reply["data"]["_id"]
        joined = await self.call(Event.CONVERSATION_JOIN, {"conversationId": conv_id})
        assert joined["success"], joined
        return conv_id

    async def send(self, conv_id: str, content: str) -> dict[str, Any]:
        reply = await self.call(Event.MESSAGE_SEND, {"conversationId": conv_id, "content": content})
        assert reply["success"], reply
        msg: dict[str, Any] = reply["data"]
        return msg

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
        return [
            f
            for f in self.frames
            if f.get("event") == name and (conv_id is None or f.get("conversationId") == conv_id)
        ]

    async def http_get(self, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.http_base) as http:
            resp = await http.get(path, headers={"Authorization": f"Bearer {self.token}"})
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]

    async def close(self) -> None:
        await self.ws.close()
        await self._reader
