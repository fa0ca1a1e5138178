"""Degraded but correct without KV (issue 19): the two nodes other than the gateway's are
killed (-9), the node holding the (single-replica) sessions bucket among them.

Before: a resume waited 5.0 s and got a fresh session without its conversations, and
``/v1/scaling`` answered 500. Now: a resume with ``since`` is restored from the client's own
seqs (``reconnected``, ``degraded: ["sessions"]``, a new session id), one with ``session``
alone is refused before the upgrade with 503 ``SERVICE_UNAVAILABLE`` (``sessions-unavailable``),
``/v1/scaling`` answers 503 naming the buckets; all of it recovers when the node returns.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import KeyValueConfig
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parley_contract import jsonutil, subjects
from parley_devstack.natscluster import NatsCluster, NatsNode
from parley_devstack.servers import StoreServer, free_port
from parley_devstack.stack import Stack, StackConfig

from .conftest import http_get, token, uid

BUCKETS = {subjects.KV_SESSIONS: 120.0, subjects.KV_PRESENCE: 30.0, subjects.KV_INSTANCES: 30.0}


async def _sessions_holder(cluster: NatsCluster) -> NatsNode:
    """Create the gateway's buckets with one replica each; the node holding the sessions."""
    nc = await nats.connect(cluster.urls().split(","))
    js = nc.jetstream()
    try:
        for bucket, ttl in BUCKETS.items():
            for _ in range(60):
                try:
                    await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=ttl))
                    break
                except (TimeoutError, nats.errors.Error):
                    await asyncio.sleep(0.2)  # JetStream still starting
    finally:
        await nc.close()
    for _ in range(50):
        holder = await asyncio.to_thread(cluster.asset_leader, f"KV_{subjects.KV_SESSIONS}")
        if holder is not None:
            return holder
        await asyncio.sleep(0.2)
    raise AssertionError("the sessions bucket has no leader")


def _since(cid: str, seq: int) -> str:
    raw = jsonutil.dumps({cid: seq})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def _get(url: str, tok: str) -> tuple[int, Any]:
    status, body, _ = await asyncio.to_thread(http_get, url, tok, 15.0)
    return status, jsonutil.loads(body)


async def _refused(url: str, tok: str) -> tuple[int, dict[str, Any], float]:
    start = time.monotonic()
    with pytest.raises(InvalidStatus) as info:
        await connect(url, additional_headers={"Authorization": f"Bearer {tok}"}, open_timeout=15)
    response = info.value.response
    return response.status_code, jsonutil.loads(response.body or b"{}"), time.monotonic() - start


async def test_resume_and_scaling_without_their_buckets(
    cluster: NatsCluster,
    store_server: StoreServer,
    tmp_path: Path,
    clients: Callable[..., Any],
) -> None:
    holder = await _sessions_holder(cluster)
    other = next(n for n in cluster.nodes if n is not holder)
    killed = [n for n in cluster.nodes if n is not other]  # the sessions' node among them
    cfg = StackConfig(
        workdir=tmp_path / "stack",
        nats_url=cluster.urls(nodes=[other]),
        mongodb_url=store_server.url,
        database=f"parley_degraded_{uid('db')}",
        gateway_ports=[free_port()],
        agent_bridges=0,
        # The buckets stay where they are (one replica): what a single-replica deployment
        # loses with that node.
        env={"PARLEY_NATS_REPLICAS": "1"},
    )
    with Stack(cfg) as stack:
        base = stack.gateways[0].base_url
        ws_url = base.replace("http", "ws") + "/ws"
        alice = uid("alice")
        c = await clients(ws_url, alice)
        session = c.frames[0]["data"]["sessionId"]
        r = await c.cmd("conversation:create", {"title": "t"})
        assert r["success"], r
        cid = r["data"]["_id"]
        await c.close()

        for node in killed:
            cluster.kill(node)
        code, body, waited = await _refused(f"{ws_url}?session={session}", token(alice))
        assert code == 503, body
        assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert body["error"]["details"]["reason"] == "sessions-unavailable"
        # At most: the disconnect's save (1.5 s, still in flight) + the read (3 s); was 5.0 s
        # and then a fresh session.
        assert waited < 6.0

        resumed = await clients(ws_url, alice, query=f"?session={session}&since={_since(cid, 1)}")
        hello = resumed.frames[0]
        assert hello["event"] == "reconnected", hello
        assert hello["data"]["degraded"] == ["sessions"]
        assert hello["data"]["conversations"] == [{"conversationId": cid, "lastSeq": 1}]
        assert hello["data"]["sessionId"] != session
        await resumed.wait_for(lambda f: f.get("event") == "conversation:joined")

        status, scaling = await _get(f"{base}/v1/scaling", token(alice))
        assert status == 503, scaling
        assert scaling["error"]["code"] == "SERVICE_UNAVAILABLE"
        # The buckets are spread over the nodes: at least one of them was on a killed one.
        details = scaling["error"]["details"]
        assert details["reason"] == "kv-unavailable"
        assert set(details["unavailable"]) & {subjects.KV_PRESENCE, subjects.KV_INSTANCES}
        assert isinstance(details["partial"], dict)

        # The node returns: everything answers again by itself.
        for node in killed:
            cluster.start_node(node)
        await asyncio.to_thread(cluster.wait_quorum, 30.0)
        new_session = hello["data"]["sessionId"]
        deadline = time.monotonic() + 30
        while True:
            status, scaling = await _get(f"{base}/v1/scaling", token(alice))
            if status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert status == 200 and scaling["success"], scaling
        await resumed.close()  # saved at the disconnect, now that the bucket answers
        again = await clients(ws_url, alice, query=f"?session={new_session}")
        assert again.frames[0]["event"] == "reconnected"
        assert "degraded" not in again.frames[0]["data"]
        assert [x["conversationId"] for x in again.frames[0]["data"]["conversations"]] == [cid]
