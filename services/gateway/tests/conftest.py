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


class FakeConversationService:
    """A narrow stand-in for the conversation service (unit tests of the gateway only).

    The acceptance tests use the real one (``python -m parley_conversation``).
    """

    def __init__(self, nats_url: str, *, batches: bool = True) -> None:
        self.nats_url = nats_url
        # Batched sends served (routes.send_batch_subject); False: subscribed as a service
        # from before them is (no responder for a batch), and the sizes of those it served.
        self.batches = batches
        self.batch_sizes: list[int] = []
        self.swallow_batches = False  # a batch never answered (its replica died with it)
        self.batch_keys: list[str] = []  # the idempotency keys of the batches' items
        self.send_keys: list[str] = []  # and of the single message:sends
        self.convs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.drop_publish: set[int] = set()  # seqs not published live (gap tests)
        self.rejoin_delay = 0.0  # seconds before a batched rejoin is answered (a slow service)
        self.nc: Any = None

    async def start(self) -> FakeConversationService:
        import nats

        from parley_contract import subjects
        from parley_contract.partitions import PARTITIONS
        from parley_contract.routes import REJOIN_SUBJECT, ROUTES

        self.nc = await nats.connect(self.nats_url)
        if self.batches:
            await self.nc.subscribe(subjects.COMMANDS_WILDCARD, cb=self._on_cmd)
        else:  # as a conversation service from before batched sends subscribes
            for route in ROUTES.values():
                await self.nc.subscribe(route.subject, cb=self._on_cmd)
            for n in range(PARTITIONS):
                await self.nc.subscribe(subjects.partition_commands(n), cb=self._on_cmd)
            await self.nc.subscribe(REJOIN_SUBJECT, cb=self._on_cmd)
        await self.nc.subscribe(subjects.QUERY_CONVERSATIONS_WILDCARD, cb=self._on_query)
        await self.nc.flush()
        return self

    async def stop(self) -> None:
        await self.nc.close()

    async def _reply(self, msg: Any, env: dict[str, Any]) -> None:
        await msg.respond(jsonutil.dumps(env))

    async def _on_cmd(self, msg: Any) -> None:
        from parley_contract import envelopes, subjects
        from parley_contract.errors import ErrorCode, ParleyError
        from parley_contract.events import Event
        from parley_contract.routes import (
            REJOIN_SUBJECT,
            ROUTES,
            batch_route_of_subject,
            route_of_subject,
        )

        if batch_route_of_subject(msg.subject) is not None:  # one envelope per item
            req = jsonutil.loads(msg.data)
            self.batch_sizes.append(len(req["items"]))
            self.batch_keys.extend(item["idempotencyKey"] for item in req["items"])
            if self.swallow_batches:
                return
            results = []
            for item in req["items"]:
                try:
                    ROUTES[Event.MESSAGE_SEND].parse(item["data"])
                except ParleyError as exc:
                    results.append(envelopes.fail_from(exc))
                    continue
                results.append(await self._send(req["principal"], item["data"]))
            await self._reply(msg, envelopes.ok({"results": results}))
            return
        # Validated as the real service does: the route's request, decoded once. A write
        # arrives on its conversation's partition subject (docs/affinity.md).
        route = route_of_subject(msg.subject)
        subj = route.subject if route is not None else msg.subject
        if route is not None:
            try:
                route.decode(msg.data)
            except ParleyError as exc:
                await self._reply(msg, envelopes.fail_from(exc))
                return
        req = jsonutil.loads(msg.data)
        if subj == REJOIN_SUBJECT:  # the batched rejoin: one answer per principal
            await asyncio.sleep(self.rejoin_delay)
            conv = self.convs.get(req["conversationId"])
            members = [
                {"ok": True}
                if conv is not None and p["id"] in conv["parts"]
                else {"ok": False, "error": {"code": "FORBIDDEN", "message": "not a participant"}}
                for p in req["principals"]
            ]
            last = len(self.events.get(req["conversationId"], []))
            data = {"conversation": {"_id": req["conversationId"]}, "lastSeq": last}
            await self._reply(msg, envelopes.ok({**data, "members": members}))
            return
        p = req["principal"]
        data = req["data"]
        if subj == subjects.command(Event.CONVERSATION_CREATE):
            cid = data.get("conversationId") or f"conv-{len(self.convs) + 1}"
            parts = {p["id"]} | {
                x if isinstance(x, str) else x["id"] for x in data.get("participants", [])
            }
            self.convs[cid] = {"_id": cid, "title": data.get("title", "t"), "parts": parts}
            self.events[cid] = []
            await self._reply(msg, envelopes.ok({"_id": cid, "title": data.get("title")}))
            return
        if subj == subjects.command(Event.MESSAGE_SEND):
            self.send_keys.append(req["idempotencyKey"])
            await self._reply(msg, await self._send(p, data))
            return
        cid = data.get("conversationId")
        conv = self.convs.get(cid)
        if conv is None or p["id"] not in conv["parts"]:
            await self._reply(msg, envelopes.fail(ErrorCode.FORBIDDEN, "not a participant"))
            return
        if subj == subjects.command(Event.CONVERSATION_JOIN):
            await self._reply(
                msg,
                envelopes.ok({"conversation": {"_id": cid}, "lastSeq": len(self.events[cid])}),
            )
        else:
            await self._reply(msg, envelopes.ok(None))

    async def _send(self, p: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """A message:send's envelope (stored and published when the sender may post)."""
        from parley_contract import envelopes, subjects
        from parley_contract.errors import ErrorCode
        from parley_contract.events import Event

        cid = str(data.get("conversationId"))
        conv = self.convs.get(cid)
        if conv is None or p["id"] not in conv["parts"]:
            return envelopes.fail(ErrorCode.FORBIDDEN, "not a participant")
        seq = len(self.events[cid]) + 1
        message = {
            "_id": f"m-{seq}",
            "conversationId": cid,
            "content": data["content"],
            "seq": seq,
            "createdBy": p["id"],
        }
        frame = envelopes.event_frame(Event.MESSAGE_NEW, message, conversation_id=cid, seq=seq)
        self.events[cid].append(frame)
        if seq not in self.drop_publish:
            # As the real service: seq and epoch in headers too (subjects.durable_headers).
            headers = subjects.durable_headers(cid, seq, 0, Event.MESSAGE_NEW.value)
            await self.nc.publish(
                subjects.conversation_events(cid), jsonutil.dumps(frame), headers=headers
            )
        return envelopes.ok(message)

    async def _on_query(self, msg: Any) -> None:
        from parley_contract import envelopes, subjects

        req = jsonutil.loads(msg.data)
        if msg.subject == subjects.QUERY_EVENTS_SINCE:
            cid = req["conversationId"]
            after, until = req["afterSeq"], req.get("untilSeq")
            evs = [
                f
                for f in self.events.get(cid, [])
                if f["seq"] > after and (until is None or f["seq"] <= until)
            ][: req.get("limit", 500)]
            if len(jsonutil.dumps(evs)) > 900_000:  # over NATS max payload: never answered
                return
            await self._reply(
                msg, envelopes.ok({"events": evs, "lastSeq": len(self.events.get(cid, []))})
            )
        elif msg.subject == subjects.QUERY_CONVERSATION_GET:
            from parley_contract.errors import ErrorCode

            conv = self.convs.get(req["data"]["conversationId"])
            if conv is None or req["principal"]["id"] not in conv["parts"]:
                await self._reply(msg, envelopes.fail(ErrorCode.FORBIDDEN, "not a participant"))
            else:
                await self._reply(msg, envelopes.ok({"_id": conv["_id"]}))
        else:
            await self._reply(msg, envelopes.ok({"items": [], "q": req["data"]}))


@pytest.fixture
async def fake_conversation(nats_server: NatsServer) -> AsyncIterator[FakeConversationService]:
    svc = await FakeConversationService(nats_server.url).start()
    yield svc
    await svc.stop()
