"""The whole Parley system as local processes: what ``make run`` starts and e2e tests use.

A :class:`Stack` starts (or reuses) nats-server and the store, then the conversation
service replicas, the agent bridge replicas and N gateway instances, each as
``python -m parley_<service>`` configured only by environment variables, exactly as the
containers in docker-compose.yml and k8s/ are. It waits for every ``/readyz`` and can
kill, stop or restart any one process (tests of resume and drain), and
:meth:`Stack.supervise` restarts any process that dies, as compose and Kubernetes would.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from parley_contract.auth import DEV_JWT_SECRET
from parley_devstack.servers import ManagedProcess, NatsServer, StoreServer, free_port
from parley_devstack.supervisor import Backoff, Supervisor

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[4]


@dataclass
class ServiceProcess:
    """One service process and the HTTP port where it answers /readyz."""

    name: str
    module: str
    http_port: int
    env: dict[str, str]
    process: ManagedProcess

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass
class StackConfig:
    workdir: Path
    nats_url: str | None = None  # None: start a nats-server of our own
    mongodb_url: str | None = None  # None: start the embedded store
    database: str = "parley"
    gateway_ports: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    conversation_replicas: int = 1
    agent_bridges: int = 1
    host: str = "127.0.0.1"
    environment: str = "development"
    jwt_secret: str = DEV_JWT_SECRET
    log_level: str = "INFO"
    # Extra environment for every process, and per service ("conversation", "gateway",
    # "agent-bridge").
    env: dict[str, str] = field(default_factory=dict)
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    ready_timeout: float = 60.0
    # The nats-server the stack starts itself has one user per service role, each service
    # connects with its own (parley_contract.nats_auth); nats_url then carries admin's.
    nats_auth: bool = True


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.nats: NatsServer | None = None
        self.store: StoreServer | None = None
        self.nats_url = config.nats_url or ""
        self.mongodb_url = config.mongodb_url or ""
        self.conversation: list[ServiceProcess] = []
        self.bridges: list[ServiceProcess] = []
        self.gateways: list[ServiceProcess] = []
        self.supervisor: Supervisor | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, wait: bool = True) -> Stack:
        """Start the servers and services; ``wait=False``: do not wait for ``/readyz`` (a
        test of services started while NATS is down, see :meth:`wait_ready`)."""
        cfg = self.config
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.nats_url:
                self.nats = NatsServer(cfg.workdir / "nats", auth=cfg.nats_auth).start()
                self.nats_url = self.nats.url
            if not self.mongodb_url:
                self.store = StoreServer(cfg.workdir / "store").start()
                self.mongodb_url = self.store.url
            for i in range(cfg.conversation_replicas):
                self.conversation.append(self._service("conversation", i))
            for i in range(cfg.agent_bridges):
                self.bridges.append(self._service("agent-bridge", i))
            for i, port in enumerate(cfg.gateway_ports):
                self.gateways.append(self._service("gateway", i, port=port))
            for svc in self.services:
                svc.process.start()
            for svc in self.services if wait else []:
                self.wait_ready(svc)
        except BaseException:
            self.stop()
            raise
        return self

    def supervise(
        self, backoff: Backoff | None = None, *, stable_after: float = 30.0
    ) -> Supervisor:
        """Restart any process of this stack that exits (services, and the nats-server and
        store this stack started), with capped exponential backoff; :meth:`stop` ends it."""
        if self.supervisor is None:
            self.supervisor = Supervisor(backoff, stable_after=stable_after)
            for process in self.processes:
                self.supervisor.watch(process)
            self.supervisor.start()
        return self.supervisor

    @property
    def processes(self) -> list[ManagedProcess]:
        """Every process this stack started: its servers, then its services."""
        servers = [s.process for s in (self.nats, self.store) if s is not None and s.process]
        return [*servers, *(svc.process for svc in self.services)]

    def stop(self) -> None:
        if self.supervisor is not None:  # first: nothing may come back while we stop
            self.supervisor.stop()
            self.supervisor = None
        # Gateways first (they drain clients), then workers, then the servers.
        for svc in [*self.gateways, *self.bridges, *self.conversation]:
            svc.process.stop(timeout=15)
        if self.nats:
            self.nats.stop()
        if self.store:
            self.store.stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ processes

    @property
    def services(self) -> list[ServiceProcess]:
        return [*self.conversation, *self.bridges, *self.gateways]

    def base_env(self) -> dict[str, str]:
        cfg = self.config
        return {
            "NATS_URL": self.nats_url,
            "MONGODB_URL": self.mongodb_url,
            "MONGODB_DATABASE": cfg.database,
            "PARLEY_ENVIRONMENT": cfg.environment,
            "PARLEY_JWT_ALGORITHM": "HS256",
            "PARLEY_JWT_SECRET": cfg.jwt_secret,
            "PARLEY_LOG_LEVEL": cfg.log_level,
            "PYTHONUNBUFFERED": "1",
            **cfg.env,
        }

    def _service(self, kind: str, index: int, port: int | None = None) -> ServiceProcess:
        cfg = self.config
        module = "parley_" + kind.replace("-", "_")
        http_port = port or free_port()
        name = f"{kind}-{index + 1}"
        env = self.base_env()
        env["PARLEY_INSTANCE_ID"] = name
        if self.nats is not None:
            env["NATS_URL"] = self.nats.url_for(kind)
        if kind == "gateway":
            env["PARLEY_GATEWAY_HOST"] = cfg.host
            env["PARLEY_GATEWAY_PORT"] = str(http_port)
        elif kind == "conversation":
            env["PARLEY_CONVERSATION_HTTP_HOST"] = "127.0.0.1"
            env["PARLEY_CONVERSATION_HTTP_PORT"] = str(http_port)
        elif kind == "agent-bridge":
            env["PARLEY_AGENT_BRIDGE_HTTP_HOST"] = "127.0.0.1"
            env["PARLEY_AGENT_BRIDGE_HTTP_PORT"] = str(http_port)
        env.update(cfg.service_env.get(kind, {}))
        process = ManagedProcess(
            name,
            [sys.executable, "-m", module],
            cfg.workdir / "logs" / f"{name}.log",
            env=env,
            cwd=REPO_ROOT,
        )
        return ServiceProcess(name, module, http_port, env, process)

    def wait_ready(self, svc: ServiceProcess, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.config.ready_timeout)
        url = f"{svc.base_url}/readyz"
        while time.monotonic() < deadline:
            if not svc.process.running:
                raise RuntimeError(
                    f"{svc.name} exited before it was ready; last log lines:\n{svc.process.tail()}"
                )
            if http_ok(url):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{svc.name} not ready at {url}; last log lines:\n{svc.process.tail()}")

    def restart(self, svc: ServiceProcess) -> None:
        with self.supervisor.paused(svc.process) if self.supervisor else contextlib.nullcontext():
            svc.process.stop()
            svc.process.start()
        self.wait_ready(svc)

    # ------------------------------------------------------------------ addresses

    def gateway_url(self, index: int = 0) -> str:
        return self.gateways[index].base_url

    def ws_url(self, index: int = 0) -> str:
        return f"ws://127.0.0.1:{self.gateways[index].http_port}/ws"

    def describe(self) -> str:
        nats = re.sub(r"//[^@/]*@", "//", self.nats_url)  # no credentials on the console
        lines = [f"NATS      {nats}", f"store     {self.mongodb_url}"]
        lines += [f"{s.name:<16}{s.base_url}" for s in self.services]
        return "\n".join(lines)
