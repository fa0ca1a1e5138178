"""Measure what docs/deployment.md's sizing uses: the idle RSS of each service and the RSS a
gateway adds per idle, authenticated WebSocket connection.

    uv run python deploy/measure_memory.py 3000

Starts a real nats-server and the embedded MongoDB-wire store (parley_devstack), one
conversation service, one agent bridge and one gateway in development mode on free ports,
opens N connections (each with its own token) to the gateway, waits a heartbeat round and
reads VmRSS from /proc (Linux only).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import tempfile
from pathlib import Path

import httpx
import websockets

from parley_contract.auth import mint_token
from parley_contract.events import PrincipalKind
from parley_devstack.servers import ManagedProcess, NatsServer, StoreServer, free_port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def wait_ready(url: str, limit: float = 60.0) -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        for _ in range(int(limit / 0.25)):
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"not ready: {url}")


def report(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def measure(connections: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * connections + 1024
    soft = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    work = Path(tempfile.mkdtemp(prefix="parley-measure-"))
    nats = NatsServer(work / "nats").start()
    store = StoreServer(work / "store").start()
    ports = {name: free_port() for name in ("conversation", "agent_bridge", "gateway")}
    base = {"NATS_URL": nats.url, "MONGODB_URL": store.url, "PARLEY_LOG_LEVEL": "WARNING"}
    envs = {
        "conversation": {**base, "PARLEY_CONVERSATION_HTTP_PORT": str(ports["conversation"])},
        "agent_bridge": {
            **base,
            "PARLEY_AGENT_BRIDGE_HTTP_HOST": "127.0.0.1",
            "PARLEY_AGENT_BRIDGE_HTTP_PORT": str(ports["agent_bridge"]),
        },
        "gateway": {**base, "PARLEY_GATEWAY_PORT": str(ports["gateway"])},
    }
    processes: dict[str, ManagedProcess] = {}
    try:
        for name, env in envs.items():
            process = ManagedProcess(
                name, [sys.executable, "-m", f"parley_{name}"], work / f"{name}.log", env=env
            )
            process.start()
            processes[name] = process
            await wait_ready(f"http://127.0.0.1:{ports[name]}/readyz")
        await asyncio.sleep(2)
        pids = {name: p.proc.pid for name, p in processes.items() if p.proc is not None}
        for name, pid in pids.items():
            report(f"{name}: idle RSS {rss_kib(pid) / 1024:.1f} MiB")
        before = rss_kib(pids["gateway"])
        sockets = []
        for i in range(connections):
            token = mint_token(f"user-{i}", PrincipalKind.USER)
            url = f"ws://127.0.0.1:{ports['gateway']}/ws?access_token={token}"
            ws = await websockets.connect(url, open_timeout=30, ping_interval=None)
            await ws.recv()  # connected
            sockets.append(ws)
        await asyncio.sleep(25)  # one heartbeat round (20 s pings) and presence refresh
        after = rss_kib(pids["gateway"])
        report(
            f"gateway: {connections} idle connections, RSS {before / 1024:.1f} -> "
            f"{after / 1024:.1f} MiB, {(after - before) / connections:.1f} KB per connection"
        )
        for ws in sockets:
            await ws.close()
    finally:
        for process in processes.values():
            process.stop()
        nats.stop()
        store.stop()


if __name__ == "__main__":
    asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
