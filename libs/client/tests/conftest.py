"""A real stack for the client's tests: two gateways, one conversation replica, real NATS
and store (the session's servers), on a database of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from parley_devstack.servers import NatsServer, StoreServer
from parley_devstack.stack import Stack
from parley_devstack.testing import module_stack


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, store_server: StoreServer, servers_dir: Path) -> Iterator[Stack]:
    with module_stack(nats_server, store_server, servers_dir, "client") as s:
        yield s
