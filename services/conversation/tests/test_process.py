"""`python -m parley_conversation` as real processes: health, two replicas, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from parley_contract import jsonutil, subjects
from parley_contract.events import Event
from parley_devstack.servers import ManagedProcess, NatsServer, StoreServer, free_port, wait_port

from .conftest import Request, user


@pytest.fixture
def replicas(
    nats_server: NatsServer, store_server: StoreServer, db_name: str, tmp_path: Path
) -> Iterator[list[tuple[ManagedProcess, int]]]:
    procs: list[tuple[ManagedProcess, int]] = []
    for i in range(2):
        port = free_port()
        proc = ManagedProcess(
            f"conversation-{i}",
            [sys.executable, "-m", "parley_conversation"],
            tmp_path / f"conversation-{i}.log",
            env={
                "NATS_URL": nats_server.url,
                "MONGODB_URL": store_server.url,
                "MONGODB_DATABASE": db_name,
                "PARLEY_CONVERSATION_HTTP_PORT": str(port),
                "PARLEY_INSTANCE_ID": f"conv-test-{i}",
            },
        )
        proc.start()
        procs.append((proc, port))
    try:
        for proc, port in procs:
            wait_port("127.0.0.1", port, 60, proc.proc)
        yield procs
    finally:
        for proc, _ in procs:
            proc.stop()


async def wait_ready(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(200):
            r = await http.get("/readyz")
            if r.status_code == 200:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("replica never became ready")


async def test_two_processes_serve_and_drain_on_sigterm(
    replicas: list[tuple[ManagedProcess, int]], request_: Request, nc: Client
) -> None:
    for _, port in replicas:
        await wait_ready(port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{replicas[0][1]}") as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        spec = await http.get("/asyncapi.json")
        assert spec.status_code == 200 and subjects.QUERY_EVENTS_SINCE in spec.text

    alice = user("u-alice")
    r = await request_(subjects.command(Event.CONVERSATION_CREATE), {"title": "p"}, alice)
    cid = r["data"]["_id"]

    async def send(i: int) -> dict[str, Any]:
        data = {"conversationId": cid, "content": f"m{i}", "clientMessageId": f"p-{i}"}
        return await request_(subjects.command(Event.MESSAGE_SEND), data, alice, wait=15)

    first = await asyncio.gather(*(send(i) for i in range(200)))
    assert all(r["success"] for r in first)

    # SIGTERM one replica while a burst is in flight: every request still gets an answer
    # (from it before it exits, or from the other replica), nothing is lost or doubled.
    burst = [asyncio.ensure_future(send(i)) for i in range(200, 400)]
    await asyncio.sleep(0.01)
    victim, _ = replicas[0]
    victim.signal(signal.SIGTERM)
    results = await asyncio.gather(*burst, return_exceptions=True)
    assert victim.proc is not None
    assert await asyncio.to_thread(victim.proc.wait, 30) == 0, victim.tail()
    # A request caught between unsubscribe and exit may time out; a retry must fix it.
    for i, res in enumerate(results):
        if isinstance(res, BaseException) or not res["success"]:
            results[i] = await send(200 + i)
    assert all(not isinstance(r, BaseException) and r["success"] for r in results)

    body = {"principal": alice, "conversationId": cid, "afterSeq": 0, "limit": 1000}
    log = await request_(subjects.QUERY_EVENTS_SINCE, None, raw=jsonutil.dumps(body))
    assert [f["seq"] for f in log["data"]["events"]] == list(range(1, 402))
    got = await request_(subjects.QUERY_CONVERSATION_GET, {"conversationId": cid}, alice)
    assert got["data"]["totalMessages"] == 400

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{replicas[1][1]}") as http:
        metrics = (await http.get("/metrics")).text
    assert "parley_conversation_requests_total" in metrics
