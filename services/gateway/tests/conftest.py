"""Fixtures for the gateway tests: real nats-server, real gateway processes, a WS client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from parley_contract import jsonutil
from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.servers import ManagedProcess, NatsServer, StoreServer, free_port, wait_port
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack

from .fakeconv import FakeConversationService


def http_get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes, Any]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


@dataclass
class GatewayProc:
    name: str
    port: int
    proc: ManagedProcess
    env: dict[str, str]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProc:
        self.proc.start()
        assert self.proc.proc is not None
        wait_port("127.0.0.1", self.port, 30, self.proc.proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, _, _ = http_get(self.http + "/readyz")
            if status == 200:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready:\n{self.proc.tail()}")


def start_gateway(
    nats_url: str, log_dir: Path, name: str, extra_env: dict[str, str] | None = None
) -> GatewayProc:
    port = free_port()
    env = {
        "NATS_URL": nats_url,
        "PARLEY_GATEWAY_PORT": str(port),
        "PARLEY_INSTANCE_ID": name,
        "PARLEY_ENVIRONMENT": "development",
        "PARLEY_GATEWAY_DRAIN_SECONDS": "0.5",
        "PARLEY_LOG_LEVEL": "INFO",
    }
    env.update(extra_env or {})
    proc = ManagedProcess(
        name, [sys.executable, "-m", "parley_gateway"], log_dir / f"{name}.log", env=env
    )
    return GatewayProc(name, port, proc, env).start()


@pytest.fixture(scope="session")
def gateway_log_dir(servers_dir: Path) -> Path:
    path = servers_dir / "gateway-logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def gateway_factory(
    nats_server: NatsServer, gateway_log_dir: Path
) -> Iterator[Callable[..., GatewayProc]]:
    started: list[GatewayProc] = []
    counter = [0]

    def factory(extra_env: dict[str, str] | None = None, name: str | None = None) -> GatewayProc:
        counter[0] += 1
        gw_name = name or f"gw-{os.getpid()}-{time.monotonic_ns() % 10**8}-{counter[0]}"
        gw = start_gateway(nats_server.url, gateway_log_dir, gw_name, extra_env)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.proc.stop(timeout=15)


def uid(prefix: str) -> str:
    """A principal or conversation id no other test in the session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    nats_server: NatsServer,
    store_server: StoreServer,
    servers_dir: Path,
) -> Iterator[Stack]:
    """The module's real stack without agents (modules that need a bridge override it)."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with module_stack(nats_server, store_server, servers_dir, name) as s:
        yield s


def token(sub: str, kind: PrincipalKind = PrincipalKind.USER, **kw: Any) -> str:
    return mint_token(sub, kind, name=sub.title(), **kw)


async def joined_conversation(client: Any, *others: str) -> str:
    """A conversation ``client`` created (with ``others``) and joined: its id."""
    r = await client.cmd("conversation:create", {"participants": list(others)})
    assert r["success"], r
    cid: str = r["data"]["_id"]
    r = await client.cmd("conversation:join", {"conversationId": cid})
    assert r["success"], r
    return cid


@dataclass
class Client:
    """A protocol client: commands with ids, events collected in arrival order."""

    ws: ClientConnection
    frames: list[dict[str, Any]] = field(default_factory=list)
    _n: int = 0
    _reader: asyncio.Task[None] | None = None
    _cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> Client:
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = jsonutil.loads(raw)
                async with self._cond:
                    self.frames.append(frame)
                    self._cond.notify_all()
        except Exception:
            pass
        finally:
            self.closed.set()
            async with self._cond:
                self._cond.notify_all()

    async def wait_for(
        self,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        async def _find() -> dict[str, Any]:
            async with self._cond:
                while True:
                    for f in self.frames:
                        if pred(f):
                            return f
                    if self.closed.is_set():
                        raise ConnectionError(f"closed: {self.ws.close_code}")
                    await self._cond.wait()

        return await asyncio.wait_for(_find(), timeout)

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def cmd(
        self,
        event: str,
        data: Any = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        self._n += 1
        cid = f"c-{self._n}"
        frame: dict[str, Any] = {"event": event, "id": cid}
        if data is not None:
            frame["data"] = data
        await self.ws.send(jsonutil.dumps(frame).decode())
        return await self.wait_for(lambda f: f.get("id") == cid and "success" in f, timeout)

    def events(self, name: str | None = None, cid: str | None = None) -> list[dict[str, Any]]:
        return [
            f
            for f in self.frames
            if "id" not in f
            and (name is None or f.get("event") == name)
            and (cid is None or f.get("conversationId") == cid)
        ]

    def seqs(self, cid: str) -> list[int]:
        return [f["seq"] for f in self.events(cid=cid) if "seq" in f]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._reader, 5)


def presence_frames(client: Client, who: str, event: str, start: int = 0) -> list[dict[str, Any]]:
    """The ``event`` presence frames about ``who`` that ``client`` got (from ``start`` on)."""
    return [
        f
        for f in client.frames[start:]
        if f.get("event") == event and (f.get("data") or {}).get("principalId") == who
    ]


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Any]]:
    made: list[Client] = []

    async def open_client(
        url: str,
        sub: str,
        kind: PrincipalKind = PrincipalKind.USER,
        *,
        query: str = "",
        tok: str | None = None,
        header: bool = True,
        max_size: int | None = 2**22,
    ) -> Client:
        t = tok or token(sub, kind)
        if header:
            ws = await connect(
                url + query,
                additional_headers={"Authorization": f"Bearer {t}"},
                max_size=max_size,
                open_timeout=10,
            )
        else:
            sep = "&" if "?" in query else "?"
            ws = await connect(f"{url}{query}{sep}access_token={t}", max_size=max_size)
        c = Client(ws).start()
        made.append(c)
        await c.wait_for(lambda f: f.get("event") in ("connected", "reconnected"))
        return c

    yield open_client
    for c in made:
        await c.close()


@pytest.fixture
async def fake_conversation(nats_server: NatsServer) -> AsyncIterator[FakeConversationService]:
    svc = await FakeConversationService(nats_server.url).start()
    yield svc
    await svc.stop()
