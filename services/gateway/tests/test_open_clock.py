"""A resume queued for a session-read slot is not aborted by the handshake's open timer
(openclock.py), and the queue has a bound of its own (``sessions.QUEUE_SECONDS``).

A real gateway in this process on a real nats-server, real clients on both of the front's
paths (a plain upgrade: the lean connection; ``Connection: keep-alive, Upgrade``:
websockets' connection); the open timer is shortened and the only session-read slot is held
by a read the test lets go when it wants (the storm's 5,000 queued resumes, made
deterministic).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parley_contract import jsonutil
from parley_contract.events import PrincipalKind
from parley_contract.internal import Principal
from parley_devstack.servers import NatsServer
from parley_gateway import sessions
from parley_gateway.server import Gateway

from .conftest import token
from .inprocess import running_gateway
from .rawhttp import UPGRADE, Raw, request

OPEN_TIMEOUT = 0.5


class HeldBucket:
    """The real sessions bucket; a read of ``held`` waits until ``release`` is set."""

    def __init__(self, real: Any, held: str) -> None:
        self.real = real
        self.held = held
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def get(self, key: str) -> Any:
        if key == self.held:
            self.holding.set()
            await self.release.wait()
        return await self.real.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@dataclass
class Running:
    gw: Gateway
    url: str
    port: int


@pytest.fixture
async def gateway(nats_server: NatsServer) -> AsyncIterator[Running]:
    async with running_gateway(nats_server.url, "clock") as gw:
        assert gw.front is not None
        gw.front.open_timeout = OPEN_TIMEOUT
        gw.hub._loads = asyncio.Semaphore(1)  # one session-read slot
        port = gw.settings.port
        yield Running(gw, f"ws://127.0.0.1:{port}/ws", port)


async def _session(url: str, who: str) -> str:
    """A session of ``who`` (saved when its connection closes)."""
    async with connect(f"{url}?access_token={token(who)}") as ws:
        hello = jsonutil.loads(await ws.recv())
        assert hello["event"] == "connected"
        session: str = hello["data"]["sessionId"]
    return session


async def _hold_the_slot(running: Running, who: str) -> tuple[HeldBucket, asyncio.Task[Any]]:
    """A read of ``who``'s session holding the only slot until the test releases it."""
    hub = running.gw.hub
    held = await _session(running.url, who)
    await asyncio.sleep(0.3)  # its cleanup saved it
    bucket = HeldBucket(hub.kv_sessions, held)
    hub.kv_sessions = bucket  # type: ignore[assignment]
    principal = Principal(id=who, kind=PrincipalKind.USER)
    holder = asyncio.create_task(hub.load_session(held, principal))
    await asyncio.wait_for(bucket.holding.wait(), 5)
    return bucket, holder


async def _resume(running: Running, query: str, path: str) -> tuple[int, dict[str, Any]]:
    """A resume's HTTP status and its first frame (101) or its body (a refusal)."""
    if path == "lean":
        try:
            async with connect(f"{running.url}?{query}", open_timeout=30) as ws:
                return 101, jsonutil.loads(await ws.recv())
        except InvalidStatus as exc:
            return exc.response.status_code, jsonutil.loads(exc.response.body or b"")
    raw = await Raw.open(running.port)  # not a plain upgrade: websockets' connection
    try:
        await raw.send(
            request("GET", f"/ws?{query}", headers={**UPGRADE, "Connection": "keep-alive, Upgrade"})
        )
        reply = await raw.reply(head_only=True, timeout=30)
        if reply.status != 101:
            body = await asyncio.wait_for(
                raw.reader.readexactly(int(reply.headers["content-length"])), 10
            )
            return reply.status, jsonutil.loads(body)
        head = await asyncio.wait_for(raw.reader.readexactly(2), 10)
        assert head[0] == 0x81  # one unmasked text frame
        size = head[1]
        if size == 126:
            size = int.from_bytes(await raw.reader.readexactly(2), "big")
        return 101, jsonutil.loads(await asyncio.wait_for(raw.reader.readexactly(size), 10))
    finally:
        await raw.close()


@pytest.mark.parametrize("path", ["lean", "websockets"])
async def test_a_queued_resume_outlives_the_open_timer(gateway: Running, path: str) -> None:
    bob = await _session(gateway.url, "bob")
    bucket, holder = await _hold_the_slot(gateway, "alice")
    resuming = asyncio.create_task(
        _resume(gateway, f"access_token={token('bob')}&session={bob}", path)
    )
    await asyncio.sleep(3 * OPEN_TIMEOUT)  # queued for the slot well past the open timer
    assert not resuming.done()
    bucket.release.set()
    status, hello = await asyncio.wait_for(resuming, 10)
    assert status == 101 and hello["event"] == "reconnected"
    assert hello["data"]["sessionId"] == bob
    assert await holder == {}


@pytest.mark.parametrize("path", ["lean", "websockets"])
async def test_the_queue_for_a_slot_is_bounded(
    gateway: Running, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(sessions, "QUEUE_SECONDS", 2 * OPEN_TIMEOUT)
    bob = await _session(gateway.url, "bob")
    bucket, holder = await _hold_the_slot(gateway, "alice")
    query = f"access_token={token('bob')}&session={bob}"
    status, body = await asyncio.wait_for(_resume(gateway, query, path), 10)
    assert status == 503
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert body["error"]["details"]["reason"] == "sessions-busy"
    assert not holder.done()  # refused while the slot was still held
    bucket.release.set()
    await holder
    status, hello = await _resume(gateway, query, path)  # the slot free again: resumed
    assert status == 101 and hello["event"] == "reconnected"
