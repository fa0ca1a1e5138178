"""Every service starts and stays up through a NATS outage or a JetStream without quorum
(issue 19): the HTTP port opens at once, ``/readyz`` says 503 while it waits (capped
backoff), nothing exits, and it becomes ready by itself. Real processes: the gateway, the
conversation service and the agent bridge (``python -m ...``), nats-server processes."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from parley_contract import subjects
from parley_devstack.natscluster import NatsCluster
from parley_devstack.servers import NatsServer, StoreServer, free_port
from parley_devstack.stack import ServiceProcess, Stack, StackConfig

pytestmark = pytest.mark.timeout(240)

ROLES = ("gateway", "conversation", "agent-bridge")


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # nothing listening


def wait_for(condition: object, what: str, timeout: float = 60.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_up_not_ready(stack: Stack) -> None:
    """Each process is running, answers /healthz, and /readyz says 503."""
    for svc in stack.services:
        assert svc.process.running, f"{svc.name} exited:\n{svc.process.tail()}"
        wait_for(lambda s=svc: status(f"{s.base_url}/healthz") == 200, f"{svc.name} /healthz")
        assert status(f"{svc.base_url}/readyz") == 503, svc.name


def wait_all_ready(stack: Stack) -> None:
    for svc in stack.services:
        stack.wait_ready(svc, timeout=90)


def _stack(workdir: Path, nats_url: str, store: StoreServer, db: str) -> Stack:
    return Stack(
        StackConfig(
            workdir=workdir,
            nats_url=nats_url,
            mongodb_url=store.url,
            database=db,
            gateway_ports=[free_port()],
            service_env={"agent-bridge": {"PARLEY_AGENT_BRIDGE_TOOLS_WAIT": "0"}},
        )
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path / "nats")
    try:
        yield c
    finally:
        c.stop()


def test_services_wait_for_jetstream_quorum_then_replicate_three_times(
    cluster: NatsCluster, store_server: StoreServer, db_name: str, tmp_path: Path
) -> None:
    """One node of three: core NATS answers, JetStream has no meta leader. Services start,
    stay up and not ready; the two other nodes come: they become ready by themselves, and
    every bucket and the agent-turns stream have 3 replicas."""
    cluster.start_node(cluster.nodes[0])
    stack = _stack(tmp_path / "stack", cluster.urls(), store_server, db_name)
    # Each service with its own credentials, the whole server list (NATS_URL, comma-separated).
    for role in ROLES:
        stack.config.service_env.setdefault(role, {})["NATS_URL"] = cluster.url_for(role)
    stack.start(wait=False)
    try:
        assert_up_not_ready(stack)
        time.sleep(3)  # a few retries later: still up, still not ready (no crash loop)
        assert_up_not_ready(stack)

        for node in cluster.nodes[1:]:
            cluster.start_node(node)
        wait_all_ready(stack)

        replicas = asyncio.run(_replicas(cluster.urls()))
        assert replicas == {name: 3 for name in replicas} and len(replicas) == 7, replicas
        assert all(svc.process.running for svc in stack.services)
    finally:
        stack.stop()


async def _replicas(url: str) -> dict[str, int]:
    nc = await nats.connect(servers=url.split(","))
    try:
        js = nc.jetstream()
        out = {}
        for name in [f"KV_{b}" for b in _buckets()] + [subjects.STREAM_AGENT_TURNS]:
            info = await js.stream_info(name)
            out[name] = int(info.config.num_replicas or 1)
        return out
    finally:
        await nc.close()


def _buckets() -> list[str]:
    return [
        subjects.KV_PRESENCE,
        subjects.KV_INSTANCES,
        subjects.KV_SESSIONS,
        subjects.KV_TURNS,
        subjects.KV_AGENTS,
        subjects.KV_SEQUENCES,
    ]


def test_services_started_before_nats_become_ready_and_survive_an_outage(
    store_server: StoreServer, db_name: str, tmp_path: Path
) -> None:
    """No NATS at all at start; then NATS comes; then it goes away and comes back."""
    server = NatsServer(tmp_path / "nats")  # its port is chosen, nothing listens yet
    stack = _stack(tmp_path / "stack", server.url, store_server, db_name)
    stack.start(wait=False)
    try:
        assert_up_not_ready(stack)
        server.start()
        wait_all_ready(stack)

        server.stop()  # an outage after the start: everyone stays up
        gateway: ServiceProcess = stack.gateways[0]
        wait_for(lambda: status(f"{gateway.base_url}/readyz") == 503, "gateway not ready")
        assert all(svc.process.running for svc in stack.services)
        server.start()
        wait_all_ready(stack)
        assert all(svc.process.running for svc in stack.services)
    finally:
        stack.stop()
        server.stop()
