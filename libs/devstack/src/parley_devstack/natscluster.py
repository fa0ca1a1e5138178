"""Three local nats-server processes forming one JetStream cluster, from the same config
text as docker compose and k8s (``natsconf.cluster_conf``; addresses aside).

Used by the fault suite's cluster mode (``make faults-cluster``) and by tests that need
JetStream to lose quorum while core NATS stays up.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import signal
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley_contract import nats_auth
from parley_devstack import natsconf
from parley_devstack.servers import ManagedProcess, port_open, venv_binary, wait_port


def stable_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range: a node killed and started again gets
    its ports back (a free_port() can meanwhile be the source port of another connection,
    the routes' reconnects above all, and the restart fails with "address in use")."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10000, max(low, 10001))
        if port in _TAKEN or port_open(host, port):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port


_TAKEN: set[int] = set()


@dataclass(eq=False)  # identity: a node is one process slot (hashable, compared by ``is``)
class NatsNode:
    name: str
    port: int
    http_port: int
    cluster_port: int
    process: ManagedProcess | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running


@dataclass
class NatsCluster:
    workdir: Path
    size: int = 3
    host: str = "127.0.0.1"
    nodes: list[NatsNode] = field(default_factory=list, init=False)
    passwords: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.nodes = [
            NatsNode(f"nats-{i + 1}", stable_port(), stable_port(), stable_port())
            for i in range(self.size)
        ]
        self.passwords = {r: secrets.token_hex(16) for r in (*nats_auth.ROLES, "admin")}

    # ------------------------------------------------------------------ addresses

    def urls(self, user: str = "admin", nodes: list[NatsNode] | None = None) -> str:
        """A comma-separated server list with ``user``'s credentials (NATS_URL)."""
        pw = self.passwords[user]
        return ",".join(f"nats://{user}:{pw}@{self.host}:{n.port}" for n in (nodes or self.nodes))

    def url_for(self, role: str) -> str:
        return self.urls(role)

    def role_env(self, role: str) -> dict[str, str]:
        """A service's NATS environment as compose and k8s give it: every node, no
        credentials in the URLs (a node the client only learns from the cluster would get
        none), the role's user and password apart."""
        servers = ",".join(f"nats://{self.host}:{n.port}" for n in self.nodes)
        return {"NATS_URL": servers, "NATS_USER": role, "NATS_PASSWORD": self.passwords[role]}

    def env(self) -> dict[str, str]:
        """The servers' environment: each role's password, as compose and k8s give it."""
        return {natsconf.password_env(r): self.passwords[r] for r in nats_auth.ROLES}

    def config(self, node: NatsNode) -> str:
        addresses = natsconf.Addresses(
            routes=[f"{self.host}:{n.cluster_port}" for n in self.nodes],
            host=self.host,
            port=node.port,
            http_port=node.http_port,
            cluster_port=node.cluster_port,
            store_dir=str(self.workdir / node.name / "jetstream"),
            pid_file=str(self.workdir / node.name / "nats.pid"),
        )
        return natsconf.cluster_conf(addresses)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            self.start_node(node, wait=False)
        for node in self.nodes:
            assert node.process is not None
            wait_port(self.host, node.port, timeout, node.process.proc)
        self.wait_quorum(timeout)
        return self

    def start_node(self, node: NatsNode, *, wait: bool = True) -> None:
        d = self.workdir / node.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "cluster.conf").write_text(self.config(node))
        # Plus the admin user (tools, tests, the fault suite's checks), not deployed.
        (d / "auth.conf").write_text(natsconf.auth_conf(self.passwords["admin"]))
        node.process = ManagedProcess(
            node.name,
            [venv_binary("nats-server"), "-c", str(d / "cluster.conf")],
            d / "nats-server.log",
            env={"NATS_SERVER_NAME": node.name, **self.env()},
        )
        node.process.start()
        if wait:
            wait_port(self.host, node.port, 30.0, node.process.proc)

    def kill(self, node: NatsNode) -> None:
        """kill -9."""
        if node.process is not None:
            node.process.kill()

    def lame_duck(self, node: NatsNode) -> None:
        if node.process is not None:
            node.process.signal(signal.SIGUSR2)  # nats-server: lame duck mode

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.stop()

    # ------------------------------------------------------------------ monitoring

    def monitor(self, node: NatsNode, path: str, timeout: float = 2.0) -> dict[str, Any]:
        url = f"http://{self.host}:{node.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                doc: dict[str, Any] = json.loads(response.read())
                return doc
        except urllib.error.HTTPError as exc:  # /healthz answers 503 with a JSON body
            doc = json.loads(exc.read() or b"{}")
            doc.setdefault("status_code", exc.code)
            return doc

    def healthy(self, node: NatsNode) -> bool:
        """Plain /healthz: JetStream with a meta leader and current assets (quorum)."""
        if not node.running:
            return False
        try:
            return self.monitor(node, "/healthz").get("status") == "ok"
        except (OSError, ValueError):
            return False

    def wait_quorum(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(self.healthy(n) for n in self.nodes) and self.meta_leader() is not None:
                return
            time.sleep(0.2)
        raise TimeoutError(f"no JetStream quorum within {timeout}s")

    def meta_leader(self) -> NatsNode | None:
        for node in self.nodes:
            if not node.running:
                continue
            try:
                meta = self.monitor(node, "/jsz").get("meta_cluster") or {}
            except (OSError, ValueError):
                continue
            leader = meta.get("leader")
            if leader:
                return next((n for n in self.nodes if n.name == leader), None)
        return None

    def asset_leader(self, stream: str) -> NatsNode | None:
        """The node leading stream ``stream`` (a KV bucket is stream ``KV_<bucket>``)."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                jsz = self.monitor(node, "/jsz?streams=true")
            except (OSError, ValueError):
                continue
            for account in jsz.get("account_details") or []:
                for s in account.get("stream_detail") or []:
                    if s.get("name") == stream:
                        leader = (s.get("cluster") or {}).get("leader")
                        if leader:
                            return next((n for n in self.nodes if n.name == leader), None)
        return None
