"""Run the compose stack's Parley processes natively: same commands, same environment as
docker-compose.yml, minus container networking.

No Docker engine runs on these machines, so this is how the compose configuration is
exercised rather than only parsed: the test reads docker-compose.yml, takes every Parley
service's `command`, `environment` (interpolated, production mode, a generated RS256 key pair),
`deploy.replicas` and `depends_on`, maps compose hostnames to 127.0.0.1 (nats -> the test's
nats-server, mongodb -> the test's MongoDB-wire store, each service's own port -> a free
port, bind-mounted and in-image paths -> their source in the repository), starts them in
dependency order with ManagedProcess against three local nats-server processes run from the
compose NATS configuration (deploy/nats/cluster.conf and auth.conf, addresses aside;
parley_devstack.natscluster) with the compose NATS passwords, so every service connects
with its own NATS user, waits on each one's compose healthcheck URL
(/readyz), then uses the stack as a client would through a gateway, and stops everything
with SIGTERM as `docker compose down` does.

What differs from containers, on purpose: no nginx (the three gateways are checked
directly), the MongoDB URL loses its user and password (the embedded test store has no
users), and the processes share this machine's Python environment instead of images.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from parley_client import ErrorCode, ParleyClient, ParleyError
from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.idp import rs256_key_pair
from parley_devstack.natscluster import NatsCluster
from parley_devstack.servers import ManagedProcess, StoreServer, free_port

REPO = Path(__file__).resolve().parents[2]
# Paths that exist inside an image, and where the same content is in the repository.
IMAGE_PATHS = {"/app/web/dist": REPO / "web" / "dist"}
READY_TIMEOUT = 90.0
NATS_HOSTS = ("nats", "nats-2", "nats-3")
NATS_PASSWORDS = {
    f"PARLEY_NATS_{r}_PASSWORD": secrets.token_hex(12)
    for r in ("GATEWAY", "CONVERSATION", "AGENT_BRIDGE")
}


@dataclass
class Unit:
    """One process of one compose service (a replica)."""

    service: str
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    stop_grace: float
    depends_on: list[str]
    process: ManagedProcess | None = None


def _map_url(value: str, endpoints: dict[tuple[str, int], tuple[str, int]]) -> str:
    """Rewrite scheme://[user:pass@]host:port... to the native endpoint; drop credentials."""
    parts = urlsplit(value)
    host, port = parts.hostname, parts.port
    if host is None or port is None or (host, port) not in endpoints:
        return value
    new_host, new_port = endpoints[(host, port)]
    return urlunsplit(parts._replace(netloc=f"{new_host}:{new_port}"))


def _native_env(
    env: dict[str, str],
    endpoints: dict[tuple[str, int], tuple[str, int]],
    mounts: dict[str, Path],
) -> tuple[dict[str, str], dict[int, int]]:
    """The compose environment with hostnames, ports and paths made native.

    Returns the environment and the port map (container port -> native port) of the
    process's own listening ports."""
    native: dict[str, str] = {}
    own_ports: dict[int, int] = {}
    for name, raw in env.items():
        value = raw
        if name.endswith("_HOST") and value == "0.0.0.0":
            value = "127.0.0.1"
        elif name.endswith("_PORT") and value.isdigit():
            port = free_port()
            own_ports[int(value)] = port
            value = str(port)
        elif "://" in value:
            value = ",".join(_map_url(part, endpoints) for part in value.split(","))
        elif value.startswith("/"):
            for container_path, host_path in mounts.items():
                if value == container_path or value.startswith(container_path + "/"):
                    value = str(host_path) + value[len(container_path) :]
                    break
        native[name] = value
    return native, own_ports


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    mounts = dict(IMAGE_PATHS)
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if source.startswith("./"):
            mounts[rest.split(":")[0]] = REPO / source
    return mounts


def _order(services: dict[str, dict[str, Any]]) -> list[str]:
    """Parley services in depends_on order (dependencies first)."""
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {path}"
        if name in ordered or name not in services:
            return
        for dependency in services[name].get("depends_on") or {}:
            visit(dependency, (*path, name))
        ordered.append(name)

    for name in services:
        visit(name, ())
    return ordered


def _ready_url(service: dict[str, Any], own_ports: dict[int, int]) -> str:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)['\"]", test)
    assert match, f"healthcheck has no URL: {test}"
    return f"http://127.0.0.1:{own_ports[int(match.group(1))]}{match.group(2)}"


async def _wait_ready(unit: Unit, limit: float) -> None:
    assert unit.process is not None
    deadline = time.monotonic() + limit
    last = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if not unit.process.running:
                raise AssertionError(
                    f"{unit.name} exited before it was ready:\n{unit.process.tail(60)}"
                )
            try:
                response = await client.get(unit.ready_url)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            await asyncio.sleep(0.25)
    raise AssertionError(
        f"{unit.name} not ready at {unit.ready_url} in {limit}s ({last}):\n{unit.process.tail(60)}"
    )


@pytest.fixture
def jwt_keys() -> tuple[str, str]:
    """The deployment's RS256 key pair (HS256 is refused in production)."""
    return rs256_key_pair()


@pytest.fixture
def stack(
    dt: ModuleType,
    store_server: StoreServer,
    db_name: str,
    jwt_keys: tuple[str, str],
    tmp_path: Path,
) -> Iterator[list[Unit]]:
    compose = dt.load_compose(
        {
            "PARLEY_JWT_PUBLIC_KEY": jwt_keys[1],
            "PARLEY_MONGODB_PASSWORD": "unused0native0run",
            "MONGODB_DATABASE": db_name,
            **NATS_PASSWORDS,
        }
    )
    # The compose NATS nodes: the same config text, the passwords compose gives them.
    cluster = NatsCluster(tmp_path / "nats")
    nats_env = dt.compose_environment(compose["services"]["nats"])
    for role in ("gateway", "conversation", "agent-bridge"):
        cluster.passwords[role] = nats_env[f"PARLEY_NATS_{role.upper().replace('-', '_')}_PASSWORD"]
    cluster.start()
    parley = {
        name: service
        for name, service in compose["services"].items()
        if dt.compose_module(service) is not None
    }
    endpoints = {
        **{
            (host, 4222): ("127.0.0.1", node.port)
            for host, node in zip(NATS_HOSTS, cluster.nodes, strict=True)
        },
        ("mongodb", 27017): ("127.0.0.1", store_server.port),
    }
    units: list[Unit] = []
    for name in _order(parley):
        service = parley[name]
        replicas = int((service.get("deploy") or {}).get("replicas", 1))
        for replica in range(1, replicas + 1):
            env, own_ports = _native_env(
                dt.compose_environment(service), endpoints, _bind_mounts(service)
            )
            command = [str(part) for part in service["command"]]
            assert command[0] == "python"
            unit_name = name if replicas == 1 else f"{name}-{replica}"
            units.append(
                Unit(
                    service=name,
                    name=unit_name,
                    argv=[sys.executable, *command[1:]],
                    env=env,
                    ready_url=_ready_url(service, own_ports),
                    stop_grace=float(str(service.get("stop_grace_period", "10s")).rstrip("s")),
                    depends_on=[d for d in service.get("depends_on") or {} if d in parley],
                )
            )
    for unit in units:
        unit.process = ManagedProcess(
            unit.name, unit.argv, tmp_path / f"{unit.name}.log", env=unit.env, cwd=tmp_path
        )
    try:
        yield units
    finally:
        for unit in reversed(units):
            assert unit.process is not None
            unit.process.stop(timeout=30)
        cluster.stop()


async def _start_in_dependency_order(units: list[Unit]) -> None:
    """As compose does with depends_on: condition service_healthy: a service's replicas
    start once every service it depends on is ready; independent services start together."""
    services = {unit.service for unit in units}
    ready = {service: asyncio.Event() for service in services}

    async def run(service: str) -> None:
        replicas = [unit for unit in units if unit.service == service]
        for dependency in replicas[0].depends_on:
            await ready[dependency].wait()
        for unit in replicas:
            assert unit.process is not None
            unit.process.start()
        await asyncio.gather(*(_wait_ready(unit, READY_TIMEOUT) for unit in replicas))
        ready[service].set()

    # A TaskGroup: if one service never gets ready, the waits of the others are cancelled.
    async with asyncio.TaskGroup() as group:
        for service in sorted(services):
            group.create_task(run(service))


@pytest.mark.timeout(300)
async def test_compose_stack_runs_natively_reaches_readyz_serves_and_stops(
    stack: list[Unit], jwt_keys: tuple[str, str]
) -> None:
    names = sorted(unit.name for unit in stack)
    assert names == sorted(
        ["conversation-1", "conversation-2", "agent-bridge", "gateway-1", "gateway-2", "gateway-3"]
    )
    for unit in stack:
        assert unit.env["PARLEY_ENVIRONMENT"] == "production"
    # Every process reaches its compose healthcheck URL (/readyz), dependencies first.
    await _start_in_dependency_order(stack)

    # Use it as a client: a token signed with the deployment's RS256 key is accepted on every
    # gateway, each gateway reports its compose PARLEY_INSTANCE_ID.
    gateways = [u for u in stack if u.env.get("PARLEY_GATEWAY_PORT")]
    urls = [f"http://127.0.0.1:{g.env['PARLEY_GATEWAY_PORT']}" for g in gateways]
    token = mint_token(
        "u-native", PrincipalKind.USER, name="Native", private_key=jwt_keys[0], algorithm="RS256"
    )
    instance_ids = set()
    for url in urls:
        async with ParleyClient(url, token) as client:
            instance_ids.add(client.instance_id)
    assert instance_ids == {g.env["PARLEY_INSTANCE_ID"] for g in gateways}

    # A development (HS256) token is refused by a production gateway: the upgrade gets 401.
    dev_token = mint_token("u-native", PrincipalKind.USER, name="Native")
    with pytest.raises(ParleyError) as refused:
        await ParleyClient(urls[0], dev_token).connect()
    assert refused.value.code is ErrorCode.UNAUTHORIZED

    # A conversation created through gateway-1 (stored by a conversation replica in the
    # store compose points at) is read back through gateway-3's HTTP API.
    async with ParleyClient(urls[0], token) as client:
        created = await client.create_conversation(title="native")
    async with ParleyClient(urls[-1], token) as client:
        read = await client.get_conversation(created.conversation_id)
    assert read.title == "native"
    async with httpx.AsyncClient(timeout=10) as http:
        # Production mode: the development token endpoint is not there.
        dev = await http.get(f"{urls[-1]}/v1/dev/token", params={"sub": "u-1"})
    assert dev.status_code == 404, dev.text

    # The UI at PARLEY_GATEWAY_WEB_DIST (in the image: /app/web/dist, here web/dist, which
    # `make test` builds before pytest; without a build the gateway serves no UI).
    web_dist = Path(gateways[1].env["PARLEY_GATEWAY_WEB_DIST"])
    if (web_dist / "index.html").is_file():
        async with httpx.AsyncClient(timeout=10) as client:
            page = await client.get(f"http://127.0.0.1:{gateways[1].env['PARLEY_GATEWAY_PORT']}/")
        assert page.status_code == 200 and "<html" in page.text.lower()

    # `docker compose stop`: SIGTERM (stop_signal), dependents first; each shuts down within
    # its stop_grace_period (compose SIGKILLs after it) and cleanly: exit 0, or uvicorn's
    # re-raised SIGTERM after its lifespan shutdown ran ("Application shutdown complete"),
    # with no traceback.
    for unit in reversed(stack):
        assert unit.process is not None and unit.process.proc is not None
        unit.process.signal(signal.SIGTERM)
        code = await asyncio.to_thread(unit.process.proc.wait, unit.stop_grace)
        log = unit.process.tail(200)
        graceful = code == 0 or (code == -signal.SIGTERM and "Application shutdown complete" in log)
        assert graceful and "Traceback" not in log, (
            f"{unit.name} exited {code} on SIGTERM:\n{unit.process.tail(40)}"
        )
