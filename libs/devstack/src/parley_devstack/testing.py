"""Pytest fixtures that start real servers on free ports (loaded by the root conftest.py).

- ``nats_server``: one nats-server with JetStream per test session; ``nc``, a connection to
  it for one test; ``cluster``, three clustered nats-servers of one test's own.
- ``store_server``: one SecantusDB process per test session; tests isolate themselves by
  database name (``db_name`` gives each test its own).
- ``mongodb_url``: the store a test should use. ``MONGODB_URL`` in the environment points the
  conformance suite at a real MongoDB as well (``real_mongodb_url``).
- ``make_stack``: whole Parley stacks (services and gateways as real processes).
- ``module_stack``: the stack a test module shares, on the session's servers.
- ``session_saved``: waits until a gateway has saved a client's session (before a kill -9).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from parley_contract import jsonutil, subjects
from parley_devstack.natscluster import NatsCluster
from parley_devstack.servers import NatsServer, StoreServer, free_port, temp_dir
from parley_devstack.stack import Stack, StackConfig


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    with temp_dir("parley-test-") as path:
        yield path


@pytest.fixture(scope="session")
def nats_server(servers_dir: Path) -> Iterator[NatsServer]:
    server = NatsServer(servers_dir / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.drain()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-servers in one JetStream cluster, for one test (nodes may be killed)."""
    c = NatsCluster(tmp_path / "nats").start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def store_server(servers_dir: Path) -> Iterator[StoreServer]:
    server = StoreServer(servers_dir / "store").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongodb_url(store_server: StoreServer) -> str:
    """The embedded store's URL (suites add a real MongoDB via ``real_mongodb_url``)."""
    return store_server.url


@pytest.fixture
def db_name() -> str:
    return f"parley_test_{uuid.uuid4().hex[:12]}"


def real_mongodb_url() -> str | None:
    return os.environ.get("MONGODB_URL") or None


StackFactory = Callable[..., Stack]


@contextlib.contextmanager
def module_stack(
    nats_server: NatsServer,
    store_server: StoreServer,
    servers_dir: Path,
    name: str,
    *,
    gateway_env: dict[str, str] | None = None,
    bridge_env: dict[str, str] | None = None,
    **overrides: Any,
) -> Iterator[Stack]:
    """Two gateways and one conversation replica, no agent bridge, on the session's NATS
    and store with a database of their own (``parley_<name>_...``): what a test module's
    ``stack`` fixture shares. Gateways drain in 0.5 s; ``gateway_env``/``bridge_env`` add
    to the gateways'/bridges' environment, ``overrides`` replace StackConfig fields
    (``agent_bridges=1``, ``gateway_ports=[free_port()]``...)."""
    service_env = {"gateway": {"PARLEY_GATEWAY_DRAIN_SECONDS": "0.5", **(gateway_env or {})}}
    if bridge_env:
        service_env["agent-bridge"] = bridge_env
    fields: dict[str, Any] = {
        "workdir": servers_dir / f"{name}-stack-{uuid.uuid4().hex[:8]}",
        "nats_url": nats_server.url,
        "mongodb_url": store_server.url,
        "database": f"parley_{name}_{uuid.uuid4().hex[:10]}",
        "conversation_replicas": 1,
        "agent_bridges": 0,
        "service_env": service_env,
    }
    with Stack(StackConfig(**{**fields, **overrides})) as stack:
        yield stack


@pytest.fixture
def make_stack(
    store_server: StoreServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackFactory]:
    """Start whole Parley stacks: ``make_stack(gateways=2, conversation_replicas=1, ...)``.

    Each stack gets its own nats-server (fast to start; keeps JetStream streams, KV buckets
    and queue groups of one test away from another) and its own database on the session's
    store server. Every stack started is stopped when the test ends.
    """
    started: list[Stack] = []

    def factory(
        *,
        gateways: int = 2,
        conversation_replicas: int = 1,
        agent_bridges: int = 1,
        **overrides: Any,
    ) -> Stack:
        config = StackConfig(
            workdir=tmp_path_factory.mktemp("stack"),
            mongodb_url=store_server.url,
            database=f"parley_test_{uuid.uuid4().hex[:12]}",
            gateway_ports=[free_port() for _ in range(gateways)],
            conversation_replicas=conversation_replicas,
            agent_bridges=agent_bridges,
            **overrides,
        )
        stack = Stack(config)
        started.append(stack)
        return stack.start()

    try:
        yield factory
    finally:
        for stack in reversed(started):
            stack.stop()


async def session_saved(
    nats_url: str, session_id: str, delivered: dict[str, int], within: float = 15.0
) -> dict[str, int]:
    """Wait until the sessions bucket holds ``session_id`` with every conversation of
    ``delivered`` at least at its seq (cid → last seq delivered); returns what it holds.

    What a gateway killed with kill -9 leaves for a resume: it writes a changed session every
    ``PARLEY_GATEWAY_SESSION_FLUSH_SECONDS`` (0.25 s), unacknowledged. A test that kills it
    should wait for that write, not sleep a little longer than the interval: a busy machine
    runs the gateway's flush, and the NATS client's write of it, later than that."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(subjects.KV_SESSIONS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        held: dict[str, int] = {}
        while True:
            with contextlib.suppress(KeyNotFoundError, KeyDeletedError):
                entry = await kv.get(session_id)
                doc = jsonutil.loads(entry.value or b"{}")
                held = dict(doc.get("conversations") or {})
            if all(cid in held and held[cid] >= seq for cid, seq in delivered.items()):
                return held
            assert loop.time() < deadline, f"session {session_id}: {held}, not {delivered}"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
