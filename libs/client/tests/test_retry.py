"""Outcome unknown: send_message sends the same message again (same clientMessageId); other
commands fail with outcomeUnknown. The server side is a scripted WebSocket peer: a real
gateway answers TIMEOUT only when a conversation replica dies mid-command."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from parley_client import ErrorCode, ParleyClient, ParleyError

Script = Callable[[dict[str, Any], int], dict[str, Any] | None]
CONNECTED = {
    "event": "connected",
    "success": True,
    "data": {
        "sessionId": "ses-1",
        "principal": {"id": "u1", "kind": "user"},
        "instanceId": "gw-test",
        "heartbeatSeconds": 20,
        "sessionTtlSeconds": 120,
        "limits": {},
    },
    "timestamp": "2026-01-01T00:00:00.000Z",
}


def stored(cmd: dict[str, Any]) -> dict[str, Any]:
    data = cmd["data"]
    return {
        "_id": "msg-1",
        "conversationId": data["conversationId"],
        "role": "user",
        "content": data["content"],
        "clientMessageId": data["clientMessageId"],
        "seq": 2,
        "messageStatus": "sent",
    }


class Peer:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.script: Script = lambda cmd, n: None
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps(CONNECTED))
        async for raw in ws:
            cmd = json.loads(raw)
            self.received.append(cmd)
            reply = self.script(cmd, len(self.received))
            if reply == {"close": True}:
                await ws.close(1011, "scripted")
                return
            if reply is not None:
                await ws.send(json.dumps({"event": cmd["event"], "id": cmd["id"], **reply}))


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    async with serve(p.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        p.url = f"http://127.0.0.1:{port}"
        yield p


def ok(data: Any) -> dict[str, Any]:
    return {"success": True, "data": data, "timestamp": "t"}


def timeout_error() -> dict[str, Any]:
    error = {"code": "TIMEOUT", "message": "no answer", "details": {"outcomeUnknown": True}}
    return {"success": False, "error": error, "timestamp": "t"}


async def test_server_timeout_is_retried_with_the_same_client_message_id(peer: Peer) -> None:
    peer.script = lambda cmd, n: timeout_error() if n == 1 else ok(stored(cmd))
    async with ParleyClient(peer.url, "tok", backoff=lambda _: 0.01) as client:
        msg = await client.send_message("conv-1", "hello")
    sends = [c for c in peer.received if c["event"] == "message:send"]
    assert len(sends) == 2
    assert sends[0]["data"] == sends[1]["data"]  # the same message, the same clientMessageId
    assert msg.client_message_id == sends[0]["data"]["clientMessageId"]
    assert (msg.client_message_id or "").startswith("cm-")


async def test_no_reply_in_time_is_retried_too(peer: Peer) -> None:
    peer.script = lambda cmd, n: None if n == 1 else ok(stored(cmd))
    async with ParleyClient(peer.url, "tok", backoff=lambda _: 0.01) as client:
        client.send_timeout = 0.3
        msg = await client.send_message("conv-1", "hi", client_message_id="cm-mine")
    assert msg.client_message_id == "cm-mine"
    assert [c["data"]["clientMessageId"] for c in peer.received] == ["cm-mine", "cm-mine"]


async def test_a_refusal_is_not_retried(peer: Peer) -> None:
    error = {"code": "FORBIDDEN", "message": "not yours"}
    peer.script = lambda cmd, n: {"success": False, "error": error, "timestamp": "t"}
    async with ParleyClient(peer.url, "tok") as client:
        with pytest.raises(ParleyError) as err:
            await client.send_message("conv-1", "hello")
    assert err.value.code is ErrorCode.FORBIDDEN and len(peer.received) == 1


async def test_a_command_lost_with_its_socket_has_an_unknown_outcome(peer: Peer) -> None:
    peer.script = lambda cmd, n: {"close": True}
    async with ParleyClient(peer.url, "tok", backoff=lambda _: 0.05) as client:
        with pytest.raises(ParleyError) as err:
            await client.edit_message("conv-1", "msg-1", "changed")
    assert err.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert (err.value.details or {}).get("outcomeUnknown") is True


async def test_gives_up_after_the_last_attempt(peer: Peer) -> None:
    peer.script = lambda cmd, n: timeout_error()
    async with ParleyClient(peer.url, "tok", backoff=lambda _: 0.01) as client:
        with pytest.raises(ParleyError) as err:
            await client.send_message("conv-1", "hello")
    assert err.value.code is ErrorCode.TIMEOUT
    assert len(peer.received) == ParleyClient.send_attempts
