"""Cluster mode of the fault suite (issue 19): ``make faults-cluster``.

Three local nats-server processes started from the same config text as docker compose and
k8s (``parley_devstack.natsconf``, addresses aside) with one NATS user per service role;
three gateways, two conversation replicas and one agent bridge, each service with its own
credentials and every node in its ``NATS_URL``. Under the steady load of the other
scenarios (``workload.py``), nodes are killed with ``-9`` one after another — a follower
(neither the JetStream meta leader nor the leader of any Parley asset, when there is one),
then the meta leader, then the node leading each asset (the KV buckets and the agent-turns
stream) — each down ``down`` seconds, then started again on the same ports and data folder,
and given until JetStream reports it current (plain ``/healthz``) before the next kill.

While each node is down: a question to the demo agent (its turn must be answered), and a
few clients dropped to resume (their conversations must come back). At the end: 0 acked
messages lost (and the other checks of ``checks.py``), 0 agent turns unanswered, 0 resumes
without their conversations, no service process restarted or not ready.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.faults.checks import analyze, verdict
from bench.faults.clients import LoadClient
from bench.faults.workload import Workload, read_history
from parley_contract import subjects
from parley_contract.auth import mint_token
from parley_contract.events import Event
from parley_devstack.natscluster import NatsCluster, NatsNode
from parley_devstack.servers import free_port
from parley_devstack.stack import Stack, StackConfig

logger = logging.getLogger(__name__)

AGENT_ID = "agent-demo"
ASSETS = [
    f"KV_{subjects.KV_SESSIONS}",
    f"KV_{subjects.KV_PRESENCE}",
    f"KV_{subjects.KV_INSTANCES}",
    f"KV_{subjects.KV_AGENTS}",
    f"KV_{subjects.KV_TURNS}",
    f"KV_{subjects.KV_SEQUENCES}",
    f"KV_{subjects.KV_PARTITIONS}",  # conversation affinity's leases (docs/affinity.md)
    subjects.STREAM_AGENT_TURNS,
]
ROLE = {"gateway": "gateway", "conversation": "conversation", "agent-bridge": "agent-bridge"}


@dataclass
class ClusterTiming:
    warmup: float = 5.0  # load before the first kill
    down: float = 8.0  # a node stays down this long
    settle: float = 4.0  # load after a node is current again, before the next kill
    after: float = 6.0  # load after the last restart
    balance: float = 30.0  # then this long for the gateways to spread again (natsbalance.py)
    interval: float = 0.25
    conversations: int = 4
    members: int = 5
    drops: int = 3  # clients dropped (to resume) while each node is down
    steps: list[str] = field(default_factory=lambda: ["follower", "meta-leader", *ASSETS])
    keep_logs: Path | None = None  # copy the services' and nodes' logs here at the end
    log_level: str = "WARNING"


class ClusterStack:
    def __init__(self, workdir: Path, log_level: str = "WARNING") -> None:
        self.cluster = NatsCluster(workdir / "nats")
        self.stack = Stack(
            StackConfig(
                workdir=workdir / "stack",
                nats_url=self.cluster.urls("admin"),
                gateway_ports=[free_port() for _ in range(3)],
                conversation_replicas=2,
                agent_bridges=1,
                log_level=log_level,
                database="faults_cluster",
                # Each service with its own NATS user, every node in its list.
                service_env={k: self.cluster.role_env(r) for k, r in ROLE.items()},
            )
        )
        self.pids: dict[str, int | None] = {}

    def start(self) -> ClusterStack:
        self.cluster.start()
        self.stack.start()
        self.pids = {s.name: s.process.proc.pid if s.process.proc else None for s in self.services}
        return self

    def stop(self) -> None:
        for svc in self.services:
            svc.process.kill()
        for node in self.cluster.nodes:
            self.cluster.kill(node)
        if self.stack.store is not None and self.stack.store.process is not None:
            self.stack.store.process.kill()

    @property
    def services(self) -> list[Any]:
        return list(self.stack.services)

    def restarted_or_down(self) -> list[str]:
        """Services whose process is not the one started (or not running, or not ready)."""
        bad = []
        for svc in self.services:
            proc = svc.process.proc
            if proc is None or proc.poll() is not None or proc.pid != self.pids.get(svc.name):
                bad.append(f"{svc.name}: exited or restarted")
                continue
            try:
                with urllib.request.urlopen(f"{svc.base_url}/readyz", timeout=3) as resp:
                    if resp.status != 200:
                        bad.append(f"{svc.name}: not ready")
            except OSError:
                bad.append(f"{svc.name}: not ready")
        return bad

    def connections(self) -> dict[str, int]:
        """Client connections per node (from each node's /connz)."""
        out: dict[str, int] = {}
        for node in self.cluster.nodes:
            if not node.running:
                out[node.name] = 0
                continue
            try:
                out[node.name] = int(self.cluster.monitor(node, "/connz").get("num_connections", 0))
            except (OSError, ValueError):
                out[node.name] = -1
        return out

    def pick(self, step: str) -> NatsNode:
        c = self.cluster
        if step == "meta-leader":
            node = c.meta_leader()
        elif step == "follower":
            leaders = {c.meta_leader(), *(c.asset_leader(a) for a in ASSETS)}
            node = next((n for n in c.nodes if n not in leaders), None)
            node = node or next(n for n in c.nodes if n is not c.meta_leader())
        else:
            node = c.asset_leader(step)
        if node is None:
            raise RuntimeError(f"no node for {step}")
        return node

    def wait_current(self, node: NatsNode, timeout: float = 60.0) -> float:
        """Until the restarted node answers plain /healthz (quorum, assets current)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.cluster.healthy(node):
                return time.monotonic() - start
            time.sleep(0.2)
        raise TimeoutError(f"{node.name} not current within {timeout}s")


async def _gateway_spread(cs: ClusterStack) -> dict[str, int]:
    """Gateways per NATS node (client connections named ``parley-gateway ...`` in /connz)."""

    def count() -> dict[str, int]:
        out: dict[str, int] = {}
        for node in cs.cluster.nodes:
            out[node.name] = 0
            if not node.running:
                continue
            try:
                conns = cs.cluster.monitor(node, "/connz?limit=1000").get("connections") or []
            except (OSError, ValueError):
                continue
            out[node.name] = sum(1 for c in conns if "gateway" in str(c.get("name", "")))
        return out

    return await asyncio.to_thread(count)


class AgentProbe:
    """A user in a conversation with the demo agent who asks while a node is down."""

    def __init__(self, ws_urls: list[str]) -> None:
        user = "faults-cluster-agent-user"
        self.client = LoadClient(user, mint_token(user, ttl_seconds=3600), ws_urls, 2)
        self.conv = ""
        self.asked: list[tuple[str, str]] = []  # (step, message id)

    async def setup(self) -> None:
        await self.client.connect()
        reply = await self.client.call(
            Event.CONVERSATION_CREATE.value, {"title": "cluster faults", "agentId": AGENT_ID}
        )
        if not reply.get("success"):
            raise RuntimeError(f"agent conversation: {reply}")
        self.conv = str(reply["data"]["_id"])
        await self.client.join(self.conv)

    async def ask(self, step: str) -> None:
        sent = await self.client.send(self.conv, f"hello during {step}", f"ask-{len(self.asked)}")
        if sent.message_id is not None:
            self.asked.append((step, sent.message_id))
        else:
            self.asked.append((step, f"not acked: {sent.errors}"))

    async def unanswered(self, http_urls: list[str], wait: float) -> list[str]:
        deadline = time.monotonic() + wait
        missing: list[str] = []
        while True:
            history = await read_history(http_urls, self.client.token, self.conv)
            answered = {
                m.get("parentMessageId")
                for m in history
                if m.get("role") == "assistant" and m.get("messageType") == "text"
            }
            missing = [f"{step}: {mid}" for step, mid in self.asked if mid not in answered]
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(1.0)


async def run_cluster(timing: ClusterTiming, workdir: Path | None = None) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faults-cluster-", dir=workdir) as tmp:
        cs = ClusterStack(Path(tmp), timing.log_level)
        await asyncio.to_thread(cs.start)
        try:
            result = await _run_on(cs, timing)
        finally:
            await asyncio.to_thread(cs.stop)
            if timing.keep_logs is not None:
                await asyncio.to_thread(_copy_logs, Path(tmp), timing.keep_logs)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _copy_logs(workdir: Path, target: Path) -> None:
    """Every ``*.log`` under the run's folder into ``target`` (a fresh folder per run)."""
    target.mkdir(parents=True, exist_ok=True)
    for log in workdir.rglob("*.log"):
        shutil.copy(log, target / f"{log.parent.parent.name}-{log.parent.name}-{log.name}")


def given_up(
    load: Workload, histories: dict[str, list[dict[str, Any]]], origin: float
) -> list[dict[str, Any]]:
    """Every send the client gave up on: its attempts (seconds from the first kill, how long,
    what came back) and whether the store has it anyway (an attempt it was not told of)."""
    out = []
    for conv, members in load.convs.items():
        stored = {str(m.get("clientMessageId")) for m in histories.get(conv, [])}
        for client in members:
            for s in client.sends:
                if s.acked_at is not None:
                    continue
                out.append(
                    {
                        "cmid": s.cmid,
                        "first_sent_s": round(s.first_sent - origin, 1),
                        "stored": s.cmid in stored,
                        "final_error": s.final_error,
                        "attempts": [
                            f"{at - origin:+.1f}s {took:.1f}s {what}" for at, took, what in s.trace
                        ],
                    }
                )
    return out


def slowest(load: Workload, origin: float, n: int = 8) -> list[dict[str, Any]]:
    """The ``n`` acked sends that waited longest, with their attempts (as in given_up)."""
    acked = [s for ms in load.convs.values() for c in ms for s in c.sends if s.wait is not None]
    acked.sort(key=lambda s: s.wait or 0.0, reverse=True)
    return [
        {
            "cmid": s.cmid,
            "wait_s": round(s.wait or 0.0, 1),
            "first_sent_s": round(s.first_sent - origin, 1),
            "attempts": [f"{at - origin:+.1f}s {took:.1f}s {what}" for at, took, what in s.trace],
        }
        for s in acked[:n]
    ]


WATCHED_METRICS = (
    "parley_conversation_requests_total",
    "parley_conversation_request_seconds_bucket",
    "parley_gateway_request_retries_total",
)


def service_metrics(cs: ClusterStack) -> dict[str, list[str]]:
    """The services' request counters and send latencies (Prometheus lines) at the end."""
    out: dict[str, list[str]] = {}
    for svc in cs.services:
        try:
            with urllib.request.urlopen(f"{svc.base_url}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError as exc:
            out[svc.name] = [f"unreadable: {exc!r}"]
            continue
        out[svc.name] = [
            line
            for line in text.splitlines()
            if line.startswith(WATCHED_METRICS) and ("send" in line or "gateway" in line)
        ]
    return out


async def _run_on(cs: ClusterStack, timing: ClusterTiming) -> dict[str, Any]:
    ws_urls = [cs.stack.ws_url(i) for i in range(3)]
    http_urls = [cs.stack.gateway_url(i) for i in range(3)]
    load = Workload(
        ws_urls,
        http_urls,
        "cluster",
        conversations=timing.conversations,
        members=timing.members,
        interval=timing.interval,
    )
    probe = AgentProbe(ws_urls)
    steps: list[dict[str, Any]] = []
    first_kill = 0.0
    try:
        await load.setup()
        await probe.setup()
        load.start()
        await asyncio.sleep(timing.warmup)
        for i, step in enumerate(timing.steps):
            node = await asyncio.to_thread(cs.pick, step)
            before = await asyncio.to_thread(cs.connections)
            kill_at = time.monotonic()
            cs.cluster.kill(node)
            first_kill = first_kill or kill_at
            logger.info("step %s: kill -9 %s (connections %s)", step, node.name, before)
            await asyncio.sleep(1.0)
            await probe.ask(step)
            for client in load.clients[i % 3 :: 7][: timing.drops]:
                await client.drop()
            await asyncio.sleep(max(0.0, timing.down - 1.0))
            down = time.monotonic() - kill_at
            await asyncio.to_thread(cs.cluster.start_node, node)
            current = await asyncio.to_thread(cs.wait_current, node)
            await asyncio.sleep(timing.settle)
            after = await asyncio.to_thread(cs.connections)
            steps.append(
                {
                    "step": step,
                    "killed": node.name,
                    "kill_at_s": round(kill_at - first_kill, 1),
                    "down_s": round(down, 1),
                    "current_after_restart_s": round(current, 1),
                    "connections_before": before,
                    "connections_after": after,
                }
            )
        await asyncio.sleep(timing.after)
        balanced_at = time.monotonic()
        spread = await _gateway_spread(cs)
        while time.monotonic() - balanced_at < timing.balance and max(spread.values()) > 1:
            await asyncio.sleep(1.0)
            spread = await _gateway_spread(cs)
        spread_s = round(time.monotonic() - balanced_at, 1)
        await load.stop()
        histories = await load.histories()
        result = analyze(load.convs, histories, first_kill)
        result["given_up"] = given_up(load, histories, first_kill)
        result["slowest"] = slowest(load, first_kill)
        result["service_metrics"] = await asyncio.to_thread(service_metrics, cs)
        why = verdict(result, None, False, False)
        if result.get("failed"):  # the client gave up after 30 s of retries: a user sees it
            why.append(f"{result['failed']} sends given up after 30 s of retries")
        unanswered = await probe.unanswered(http_urls, 60.0)
        resumes = [f"{c.user}: {f}" for c in load.clients for f in c.resume_failures]
        bad = await asyncio.to_thread(cs.restarted_or_down)
        if unanswered:
            why.append(f"{len(unanswered)} agent turns unanswered: {unanswered}")
        if resumes:
            why.append(f"{len(resumes)} resumes without their conversations: {resumes[:5]}")
        if bad:
            why.append(f"services restarted or not ready: {bad}")
        result.update(
            steps=steps,
            agent_turns=len(probe.asked),
            agent_turns_unanswered=len(unanswered),
            resumes=sum(c.reconnects for c in load.clients),
            resumes_degraded=sum(c.degraded_resumes for c in load.clients),
            resumes_failed=len(resumes),
            services_restarted=bad,
            gateways_per_node_end=spread,
            gateways_spread_after_s=spread_s,
            connections_end=await asyncio.to_thread(cs.connections),
        )
    finally:
        await load.close()
        await probe.client.close()
    result.update(scenario="cluster", killed="each NATS node in turn", ok=not why, why=why)
    return result
