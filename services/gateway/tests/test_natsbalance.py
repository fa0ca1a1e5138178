"""Gateways spread over the NATS nodes again after one returns (natsbalance.py).

The plan alone (every gateway computes the same one), then three real gateways on three local
nats-server processes: the node of a gateway is killed (-9) and started again, twice; each
time the gateways are back to one per node by themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from parley_devstack.natscluster import NatsCluster
from parley_devstack.servers import StoreServer, free_port
from parley_devstack.stack import Stack, StackConfig
from parley_gateway.natsbalance import Balancer, Placement, plan

from .conftest import uid


def _at(**nodes: list[str]) -> list[Placement]:
    return [Placement(i, node) for node, instances in nodes.items() for i in instances]


def test_after_two_kills_exactly_the_excess_moves_each_to_a_node_that_needs_one() -> None:
    # Six gateways on nats-1, nats-2 and nats-3 back and empty: two move to each.
    moves = plan(
        _at(**{"nats-1": ["g1", "g2", "g3", "g4", "g5", "g6"]}), ["nats-1", "nats-2", "nats-3"]
    )
    assert sorted(moves.values()) == ["nats-2", "nats-2", "nats-3", "nats-3"]
    assert set(moves) == {"g3", "g4", "g5", "g6"}  # the highest ids: g1, g2 stay


def test_the_usual_three_gateways_cases() -> None:
    nodes = ["nats-1", "nats-2", "nats-3"]
    # 2/1/0: one of the two moves to the empty node, never to the one that has a gateway.
    assert plan(_at(**{"nats-1": ["g1", "g3"], "nats-2": ["g2"]}), nodes) == {"g3": "nats-3"}
    # 3/0/0: two move, one to each empty node.
    assert plan(_at(**{"nats-2": ["g1", "g2", "g3"]}), nodes) == {
        "g3": "nats-1",
        "g2": "nats-3",
    }
    # Balanced or as even as it gets: nobody moves.
    assert plan(_at(**{"nats-1": ["g1"], "nats-2": ["g2"], "nats-3": ["g3"]}), nodes) == {}
    assert plan(_at(**{"nats-1": ["g1", "g2"], "nats-2": ["g3"]}), ["nats-1", "nats-2"]) == {}
    assert plan(_at(**{"nats-1": ["g1", "g2"]}), ["nats-1"]) == {}  # one node: nowhere to go


def test_every_gateway_computes_the_same_plan_whatever_order_it_reads_the_heartbeats() -> None:
    placements = _at(**{"nats-1": ["g4", "g2", "g9", "g1"], "nats-3": ["g5"]})
    nodes = ["nats-3", "nats-2", "nats-1"]
    first = plan(placements, nodes)
    assert first == plan(list(reversed(placements)), list(reversed(nodes)))
    assert len(first) == 2 and all(node != "nats-1" for node in first.values())


def test_gateways_on_a_node_not_live_are_left_out() -> None:
    # nats-3 is down; its gateway's heartbeat still names it: not counted, no move planned.
    placements = _at(**{"nats-1": ["g1"], "nats-2": ["g2"], "nats-3": ["g3"]})
    assert plan(placements, ["nats-1", "nats-2"]) == {}


def test_a_gateway_counts_itself_where_it_is_now_not_where_its_heartbeat_says() -> None:
    b = Balancer("g3")
    # Its heartbeat still says nats-3 (written before it failed over to nats-1).
    placements = _at(**{"nats-1": ["g1"], "nats-2": ["g2"], "nats-3": ["g3"]})
    assert b.target("nats-1", placements, ["nats-1", "nats-2", "nats-3"]) == "nats-3"
    assert Balancer("g1").target("nats-1", placements, ["nats-1", "nats-2", "nats-3"]) is None


# ---------------------------------------------------------------------- real gateways


def _gateways_per_node(cluster: NatsCluster) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in cluster.nodes:
        out[node.name] = 0
        if not node.running:
            continue
        try:
            conns = cluster.monitor(node, "/connz?limit=1000").get("connections") or []
        except (OSError, ValueError):
            continue
        out[node.name] = sum(1 for c in conns if "parley-gateway" in str(c.get("name", "")))
    return out


async def _spread(
    cluster: NatsCluster, seconds: float, done: Callable[[dict[str, int]], bool]
) -> dict[str, int]:
    """Gateways per node once ``done`` holds (or as they are after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        spread = await asyncio.to_thread(_gateways_per_node, cluster)
        if done(spread) or time.monotonic() > deadline:
            return spread
        await asyncio.sleep(0.5)


def _even(spread: dict[str, int]) -> bool:
    return sorted(spread.values()) == [1, 1, 1]


async def test_gateways_spread_over_the_nodes_again_after_each_return(
    cluster: NatsCluster, store_server: StoreServer, tmp_path: Path
) -> None:
    cfg = StackConfig(
        workdir=tmp_path / "stack",
        nats_url=cluster.urls(),
        mongodb_url=store_server.url,
        database=f"parley_balance_{uid('db')}",
        gateway_ports=[free_port() for _ in range(3)],
        conversation_replicas=0,
        agent_bridges=0,
        # A heartbeat (and a balancing round) every second.
        env={"PARLEY_GATEWAY_PRESENCE_TTL_SECONDS": "3"},
    )
    with Stack(cfg):
        # Wherever they connected first, they spread to one per node.
        spread = await _spread(cluster, 60.0, _even)
        assert _even(spread), spread
        for node in cluster.nodes[:2]:
            cluster.kill(node)
            # Its gateway fails over: 2/1 on the two nodes left.
            failed_over = await _spread(cluster, 30.0, lambda s: sum(s.values()) == 3)
            assert sorted(failed_over.values()) == [0, 1, 2], failed_over
            await asyncio.to_thread(cluster.start_node, node)
            # One per node again by themselves once the node is current (a move waits up
            # to 10 s after the gateway's previous one, then a refresh: 1 s here).
            spread = await _spread(cluster, 45.0, _even)
            assert _even(spread), spread
