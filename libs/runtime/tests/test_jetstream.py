"""JetStream declarations against real nats-server processes: a single server and a local
3-node cluster (parley_devstack.cluster). Replicas by default, by setting, and an existing
bucket or stream scaled at start (issue 19)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from parley_contract import subjects
from parley_devstack.natscluster import NatsCluster
from parley_devstack.servers import NatsServer
from parley_runtime import jetstream
from parley_runtime.settings import ServiceSettings


class Probe(ServiceSettings):
    instance_prefix = "probe"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
async def cluster_nc(cluster: NatsCluster) -> AsyncIterator[Client]:
    nc = await nats.connect(servers=cluster.urls().split(","))
    try:
        yield nc
    finally:
        await nc.close()


async def _replicas(nc: Client, stream: str) -> int:
    info = await nc.jetstream().stream_info(stream)
    return int(info.config.num_replicas or 1)


async def test_a_single_server_gets_one_replica(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        want = jetstream.replicas(nc, Probe(nats_url=nats_server.url))
        assert want == jetstream.Replicas(1, explicit=False)
        js = nc.jetstream()
        kv = await jetstream.declare_kv(js, "rt_single", want, ttl=30)
        await kv.put("k", b"v")
        again = await jetstream.declare_kv(js, "rt_single", want, ttl=30)  # idempotent
        assert (await again.get("k")).value == b"v"
        assert await _replicas(nc, "KV_rt_single") == 1
    finally:
        await nc.close()


async def test_a_cluster_gets_three_and_existing_assets_are_scaled_up(
    cluster: NatsCluster, cluster_nc: Client
) -> None:
    js = cluster_nc.jetstream()
    # Created by an older version: one replica.
    await js.create_key_value(KeyValueConfig(bucket="rt_old", history=1, ttl=60, replicas=1))
    settings = Probe(nats_url=cluster.urls(nodes=cluster.nodes[:1]))  # the rest is announced
    want = jetstream.replicas(cluster_nc, settings)
    assert want == jetstream.Replicas(3, explicit=False)

    await jetstream.declare_kv(js, "rt_old", want, ttl=60)
    assert await _replicas(cluster_nc, "KV_rt_old") == 3
    await jetstream.declare_kv(js, "rt_new", want, ttl=60)
    assert await _replicas(cluster_nc, "KV_rt_new") == 3
    await jetstream.declare_agent_turns_stream(js, want)
    assert await _replicas(cluster_nc, subjects.STREAM_AGENT_TURNS) == 3


async def test_automatic_never_scales_down_an_explicit_setting_does(
    cluster: NatsCluster, cluster_nc: Client
) -> None:
    js = cluster_nc.jetstream()
    await jetstream.declare_kv(js, "rt_down", jetstream.Replicas(3, explicit=False), ttl=60)
    # A service that saw a smaller cluster (a node away) leaves it at 3.
    await jetstream.declare_kv(js, "rt_down", jetstream.Replicas(1, explicit=False), ttl=60)
    assert await _replicas(cluster_nc, "KV_rt_down") == 3
    explicit = jetstream.replicas(cluster_nc, Probe(nats_url=cluster.urls(), nats_replicas=1))
    assert explicit == jetstream.Replicas(1, explicit=True)
    await jetstream.declare_kv(js, "rt_down", explicit, ttl=60)
    assert await _replicas(cluster_nc, "KV_rt_down") == 1


async def test_a_changed_ttl_is_applied_to_the_existing_bucket(cluster_nc: Client) -> None:
    js = cluster_nc.jetstream()
    want = jetstream.Replicas(1, explicit=True)
    await jetstream.declare_kv(js, "rt_ttl", want, ttl=30)
    await jetstream.declare_kv(js, "rt_ttl", want, ttl=90)
    info = await js.stream_info("KV_rt_ttl")
    assert info.config.max_age == pytest.approx(90)
    # Shorter than the bucket's duplicate window (2 min at most): that is lowered too.
    await jetstream.declare_kv(js, "rt_ttl", want, ttl=3)
    info = await js.stream_info("KV_rt_ttl")
    assert info.config.max_age == pytest.approx(3)


def test_nats_url_lists_servers_and_replicas_setting(tmp_path: Path) -> None:
    settings = Probe(nats_url="nats://a:4222, b:4223 ,", nats_replicas="auto")  # type: ignore[arg-type]
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4223"]
    assert settings.nats_replicas is None
    assert Probe(nats_replicas="3").nats_replicas == 3  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"PARLEY_NATS_REPLICAS|nats_replicas"):
        Probe(nats_replicas=7)
