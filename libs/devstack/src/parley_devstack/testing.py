"""Pytest fixtures that start real servers on free ports (loaded by the root conftest.py).

- ``nats_server``: one nats-server with JetStream per test session.
- ``store_server``: one SecantusDB process per test session; tests isolate themselves by
  database name (``db_name`` gives each test its own).
- ``mongodb_url``: the store a test should use. ``MONGODB_URL`` in the environment points the
  conformance suite at a real MongoDB as well (see ``store_urls``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley_devstack.servers import NatsServer, StoreServer, temp_dir


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


@pytest.fixture(scope="session")
def store_server(servers_dir: Path) -> Iterator[StoreServer]:
    server = StoreServer(servers_dir / "store").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongodb_url(store_server: StoreServer) -> str:
    """The embedded store's URL (a real MongoDB is added by ``store_urls`` when configured)."""
    return store_server.url


@pytest.fixture
def db_name() -> str:
    return f"parley_test_{uuid.uuid4().hex[:12]}"


def real_mongodb_url() -> str | None:
    return os.environ.get("MONGODB_URL") or None
