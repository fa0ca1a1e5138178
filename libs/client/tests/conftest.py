"""A real stack for the client's tests: two gateways, one conversation replica, real NATS
and store (the session's servers), on a database of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.stack import Stack, StackConfig


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    cfg = StackConfig(
        workdir=servers_dir / f"client-stack-{uuid.uuid4().hex[:8]}",
        nats_url=nats_server.url,
        mongodb_url=store_server.url,
        database=f"parley_client_{uuid.uuid4().hex[:10]}",
        conversation_replicas=1,
        agent_bridges=0,
        service_env={"gateway": {"PARLEY_GATEWAY_DRAIN_SECONDS": "0.5"}},
    )
    with Stack(cfg) as s:
        yield s
