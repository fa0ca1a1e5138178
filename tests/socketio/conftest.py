"""The real socket.io-client (Node, locked in package-lock.json) against a real Parley stack.

``driver.mjs`` runs the sockets; ``Driver`` sends it JSON-line commands and collects what each
socket sees. ``RoundRobin`` is a TCP balancer with no stickiness at all: every new TCP
connection (every polling request: the gateway answers HTTP with ``Connection: close``) goes
to the next gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parley_contract import jsonutil
from parley_devstack.servers import NatsServer, StoreServer, free_port
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack

HERE = Path(__file__).resolve().parent


def ensure_node_modules() -> None:
    if (HERE / "node_modules" / "socket.io-client").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm not found: the Socket.IO tests need Node >= 20 (make test runs npm ci)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)


class Driver:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []
        self._cond = asyncio.Condition()
        self._req = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = jsonutil.loads(line)
            async with self._cond:
                self.seen.append(msg)
                self._cond.notify_all()

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(jsonutil.dumps(cmd) + b"\n")

    async def wait(
        self,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float = 15.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            async with self._cond:
                while True:
                    for m in self.seen:
                        if m.get("type") == "driver_error":
                            raise AssertionError(m)
                        if pred(m):
                            return m
                    await self._cond.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise AssertionError(f"not seen in {timeout}s; seen: {self.seen[-20:]}") from None

    async def wait_type(self, sock: str, kind: str, timeout: float = 15.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The first message of type ``kind`` (connect, upgrade, disconnect...) of ``sock``."""
        return await self.wait(lambda m: m.get("sock") == sock and m.get("type") == kind, timeout)

    def of(self, sock: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.seen if m.get("sock") == sock and kind in (None, m.get("type"))]

    def events(self, sock: str, event: str | None = None) -> list[dict[str, Any]]:
        return [
            m["payload"] for m in self.of(sock, "event") if event is None or m.get("event") == event
        ]

    async def open(self, sock: str, url: str, **opts: Any) -> dict[str, Any]:
        """io(url, opts); the first connect or connect_error of this socket."""
        self.send({"op": "open", "sock": sock, "url": url, "opts": opts})
        return await self.wait(
            lambda m: m.get("sock") == sock and m["type"] in ("connect", "connect_error")
        )

    async def emit(
        self,
        sock: str,
        event: str,
        data: Any = None,
        *,
        args: list[Any] | None = None,
        timeout: float = 15.0,  # noqa: ASYNC109
    ) -> Any:
        """socket.emit(event, data, ack): the ack's first argument (the reply envelope)."""
        req = next(self._req)
        cmd: dict[str, Any] = {"op": "emit", "sock": sock, "event": event, "req": req}
        if args is not None:
            cmd["args"] = args
        elif data is not None:
            cmd["data"] = data
        self.send(cmd)
        ack = await self.wait(lambda m: m.get("type") == "ack" and m.get("req") == req, timeout)
        assert ack["error"] is None, ack
        return ack["args"][0] if ack["args"] else None

    async def state(self, sock: str) -> dict[str, Any]:
        req = next(self._req)
        self.send({"op": "state", "sock": sock, "req": req})
        return await self.wait(lambda m: m.get("type") == "state" and m.get("req") == req)

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@pytest.fixture
async def driver() -> AsyncIterator[Driver]:
    ensure_node_modules()
    node = shutil.which("node")
    assert node is not None, "node not found"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(HERE / "driver.mjs"),
        cwd=HERE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=2**24,
    )
    d = Driver(proc)
    await d.wait(lambda m: m.get("type") == "ready")
    yield d
    await d.close()


class RoundRobin:
    """A TCP balancer over the gateways: each new connection goes to the next one."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = free_port()
        self.picks: list[int] = []
        self._count = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.blocked = False
        self.ws_port: int | None = None  # set: every WebSocket upgrade goes there

    def cut(self, *, block: bool) -> None:
        """Drop every connection (no goodbye); ``block``: refuse new ones until unblocked."""
        self.blocked = block
        for w in list(self._open):
            w.transport.abort()
        self._open.clear()

    async def start(self) -> RoundRobin:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", self.port)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        head = b""
        if self.ws_port is not None:  # peek: is this a WebSocket upgrade?
            head = await reader.read(65536)
        if self.ws_port is not None and b"upgrade: websocket" in head.lower():
            candidates = [self.ws_port]
        else:
            i = self._count % len(self.ports)
            self._count += 1
            self.picks.append(i)
            # a backend that refuses the connection is skipped (nginx's proxy_next_upstream)
            candidates = self.ports[i:] + self.ports[:i]
        for port in candidates:
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.transport.abort()
            return
        self._open |= {writer, up_w}
        up_w.write(head)
        try:
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        finally:
            self._open -= {writer, up_w}

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture(scope="module")
def sio_stack(
    nats_server: NatsServer, store_server: StoreServer, servers_dir: Path
) -> Iterator[Stack]:
    env = {"PARLEY_GATEWAY_HEARTBEAT_SECONDS": "5"}
    with module_stack(nats_server, store_server, servers_dir, "sio", gateway_env=env) as s:
        yield s


@pytest.fixture
async def balancer(sio_stack: Stack) -> AsyncIterator[RoundRobin]:
    rr = await RoundRobin([g.http_port for g in sio_stack.gateways]).start()
    yield rr
    await rr.stop()
