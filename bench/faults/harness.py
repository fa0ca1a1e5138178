"""The stack under fault: real processes on free ports, killed with SIGKILL and restarted.

A thin layer over :class:`parley_devstack.stack.Stack` (the same processes ``make run`` and
the bench start): nats-server with JetStream, the embedded MongoDB-wire store (SecantusDB)
as its own process, two gateways, conversation replicas and agent bridges with the offline
demo agent. ``kill`` is ``kill -9``; ``restart`` starts the same command again on the same
port and data folder, as a supervisor (compose, Kubernetes) would.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from parley_devstack.servers import ManagedProcess, StoreServer, free_port, wait_port
from parley_devstack.stack import ServiceProcess, Stack, StackConfig

logger = logging.getLogger(__name__)


@dataclass
class Topology:
    conversation_replicas: int = 1
    agent_bridges: int = 0
    gateways: int = 2
    # False: the store acknowledges writes before they are on disk (no --sync-on-commit) and
    # the service asks w:1 without the journal — the settings before issue 11, to show what
    # the seq epochs do when acked writes are lost.
    durable_store: bool = True


class FaultStack:
    def __init__(self, workdir: Path, topology: Topology, log_level: str = "WARNING") -> None:
        self.topology = topology
        self.own_store: StoreServer | None = None
        service_env: dict[str, dict[str, str]] = {}
        if not topology.durable_store:
            self.own_store = StoreServer(workdir / "store", sync_on_commit=False)
            service_env["conversation"] = {"PARLEY_CONVERSATION_WRITE_CONCERN": "acknowledged"}
        self.stack = Stack(
            StackConfig(
                workdir=workdir,
                mongodb_url=self.own_store.url if self.own_store else None,
                gateway_ports=[free_port() for _ in range(topology.gateways)],
                conversation_replicas=topology.conversation_replicas,
                agent_bridges=topology.agent_bridges,
                log_level=log_level,
                database="faults",
                service_env=service_env,
            )
        )

    def start(self) -> FaultStack:
        """Start every process; once more on fresh ports if a port was taken meanwhile
        (ports are picked free, then bound later by the child: another process may win)."""
        if self.own_store is not None:
            self.own_store.start()
        try:
            self.stack.start()
        except (RuntimeError, TimeoutError, OSError, HTTPException) as exc:
            logger.warning("the stack did not start (%r); again on other ports", exc)
            config = self.stack.config
            config.gateway_ports = [free_port() for _ in config.gateway_ports]
            config.workdir = config.workdir.with_name(config.workdir.name + "-again")
            self.stack = Stack(config)
            self.stack.start()
        return self

    def stop(self) -> None:
        """SIGKILL everything: the stack is thrown away with its folder, and a graceful
        drain of every process would only make each scenario slower."""
        servers = [self.stack.nats, self.stack.store or self.own_store]
        for proc in [s.process for s in self.stack.services] + [
            s.process for s in servers if s is not None and s.process is not None
        ]:
            proc.kill()

    @property
    def ws_urls(self) -> list[str]:
        return [self.stack.ws_url(i) for i in range(len(self.stack.gateways))]

    @property
    def http_urls(self) -> list[str]:
        return [self.stack.gateway_url(i) for i in range(len(self.stack.gateways))]

    # ------------------------------------------------------------------ processes by name

    def process(self, name: str) -> ManagedProcess:
        """``nats``, ``store`` or a service name such as ``gateway-1``, ``conversation-2``."""
        if name == "nats" and self.stack.nats and self.stack.nats.process:
            return self.stack.nats.process
        store = self.stack.store or self.own_store
        if name == "store" and store and store.process:
            return store.process
        return self.service(name).process

    def service(self, name: str) -> ServiceProcess:
        for svc in self.stack.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def kill(self, *names: str) -> float:
        """SIGKILL each named process (no cleanup, as a crash); the time of the kill."""
        for name in names:
            proc = self.process(name)
            logger.info("kill -9 %s (pid %s)", name, proc.proc.pid if proc.proc else None)
            proc.kill()
        return time.monotonic()

    def restart_blocking(self, name: str) -> None:
        """Start a killed process again and wait until it serves (port open or /readyz)."""
        proc = self.process(name)
        proc.start()
        if name == "nats" and self.stack.nats:
            wait_port(self.stack.nats.host, self.stack.nats.port, 30, proc.proc)
        elif name == "store" and (store := self.stack.store or self.own_store):
            wait_port(store.host, store.port, 60, proc.proc)
        else:
            self.stack.wait_ready(self.service(name), timeout=60)
        logger.info("%s restarted", name)

    async def restart(self, *names: str) -> None:
        """Restart in the order given (servers before the services that need them)."""
        for name in names:
            await asyncio.to_thread(self.restart_blocking, name)

    def turns_running(self, name: str) -> float:
        """``parley_agent_bridge_turns_running`` of one bridge (0 if unknown)."""
        svc = self.service(name)
        try:
            with urllib.request.urlopen(f"{svc.base_url}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return 0.0
        match = re.search(r"^parley_agent_bridge_turns_running (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0
