"""Gateways spread over the NATS nodes again after a node returns (issue 19).

A killed node's clients fail over to the others and, left alone, never move back: after two
kills every gateway sat on one node, and the next kill took every connection at once.

Each gateway writes the name of the NATS node it is connected to (and that node's
``host:port`` as it reached it) into its heartbeat (instances bucket). At every presence
refresh each gateway reads every heartbeat and the **live nodes**: the peers of the instances
bucket's stream that JetStream reports current (its leader and every replica neither offline
nor behind; every node of a 3-node cluster at 3 replicas), plus every node a gateway is on.
From that view every gateway computes the same :func:`plan`: while the busiest live node
holds at least two gateways more than the idlest, the busiest one's gateway with the highest
instance id moves to the idlest — so exactly the excess moves, each to a node that needs one,
and no gateway moves twice. A gateway the plan names reconnects to its target alone (the
pool narrowed to that node's addresses, a forced reconnect, the pool back), at most once per
``MIN_INTERVAL_SECONDS``.

Before (random moves with probability excess/count to any other node, a dead node still
counted as a target, 60 s between moves) the three gateways were back to 1/1/1 within 30 s
of the last return in only 2 of 4 fault-suite runs: two gateways moving at once, or moving
onto the node that already had one, then waiting a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import ParseResult

import nats.errors
from nats.aio.client import Client as NATS

logger = logging.getLogger(__name__)

MIN_INTERVAL_SECONDS = 10.0
RECONNECT_WAIT_SECONDS = 10.0
NARROW_POOL_SECONDS = 2.0  # then the whole pool again, should the target not answer


@dataclass(frozen=True)
class Placement:
    """One live gateway as its heartbeat tells: its instance id, its NATS node, and the
    ``host:port`` it reached that node at (None: not said)."""

    instance: str
    node: str
    address: str | None = None


def server_name(nc: NATS | None) -> str | None:
    """The name of the node this client is connected to (its INFO's ``server_name``)."""
    if nc is None or not nc.is_connected:
        return None
    info: Any = getattr(nc, "_server_info", None)  # nats-py keeps the INFO only privately
    name = info.get("server_name") if isinstance(info, dict) else None
    return str(name) if name else None


def address(url: ParseResult | None) -> str | None:
    """``host:port`` of a server URL, without credentials."""
    if url is None or not url.hostname:
        return None
    return f"{url.hostname}:{url.port or 4222}"


def plan(placements: Iterable[Placement], nodes: Iterable[str]) -> dict[str, str]:
    """Which gateways move where (instance id -> node) to spread them evenly over ``nodes``.

    Deterministic, so that every gateway computes the same plan from the same heartbeats:
    while the busiest node (ties: the first by name) holds at least two more than the idlest
    (ties: the first by name), its gateway with the highest instance id moves there.
    Gateways on a node not in ``nodes`` (a dead one, not failed over yet) are left out.
    """
    live = sorted(set(nodes))
    if len(live) < 2:
        return {}
    on: dict[str, list[str]] = {n: [] for n in live}
    for p in sorted(placements, key=lambda p: p.instance):
        if p.node in on:
            on[p.node].append(p.instance)
    moves: dict[str, str] = {}
    while True:
        busiest = min(live, key=lambda n: (-len(on[n]), n))
        idlest = min(live, key=lambda n: (len(on[n]), n))
        if len(on[busiest]) - len(on[idlest]) <= 1:
            return moves
        instance = on[busiest].pop()
        on[idlest].append(instance)
        moves[instance] = idlest


class Balancer:
    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.addresses: dict[str, str] = {}  # host:port -> node name, as ever seen
        self._moved_at = -MIN_INTERVAL_SECONDS
        self.moves = 0

    def learn(self, placements: Iterable[Placement]) -> None:
        for p in placements:
            if p.address:
                self.addresses[p.address] = p.node

    def target(
        self, mine: str, placements: list[Placement], live_nodes: Iterable[str]
    ) -> str | None:
        """The node this gateway should move to, if any."""
        nodes = {*live_nodes, *(p.node for p in placements)}
        # This gateway as it is now (its own heartbeat may be older than a failover).
        view = [p for p in placements if p.instance != self.instance_id]
        view.append(Placement(self.instance_id, mine))
        return plan(view, nodes).get(self.instance_id)

    async def maybe_move(
        self, nc: NATS | None, placements: list[Placement], live_nodes: Iterable[str]
    ) -> bool:
        """Given every live gateway's placement and the live nodes: move or not."""
        mine = server_name(nc)
        if nc is None or mine is None:
            return False
        here = address(nc.connected_url)
        if here:
            self.addresses[here] = mine
        self.learn(placements)
        target = self.target(mine, placements, live_nodes)
        now = time.monotonic()
        if target is None or now - self._moved_at < MIN_INTERVAL_SECONDS:
            return False
        urls = self._urls_of(nc, target)
        if not urls:
            logger.info("NATS node %s should take a gateway but its address is unknown", target)
            return False
        self._moved_at = now
        logger.info("moving from NATS node %s to %s (spreading the gateways)", mine, target)
        moved = await _reconnect_to(nc, urls)
        landed = server_name(nc)
        if landed is not None and (here := address(nc.connected_url)):
            self.addresses[here] = landed
        self.moves += int(moved and landed != mine)
        return moved and landed != mine

    def _urls_of(self, nc: NATS, node: str) -> list[str]:
        """The pool's URLs of ``node``; else those of nodes never seen (one may be it)."""
        pool = [(address(u), u.geturl()) for u in nc.servers]
        known = [url for addr, url in pool if addr and self.addresses.get(addr) == node]
        return known or [url for addr, url in pool if addr and addr not in self.addresses]


async def _reconnect_to(nc: NATS, urls: list[str]) -> bool:
    pool = [u.geturl() for u in nc.servers]
    start = time.monotonic()
    try:
        nc.set_server_pool(urls)
        await nc.force_reconnect()
        while not nc.is_connected and time.monotonic() - start < NARROW_POOL_SECONDS:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    except nats.errors.Error as exc:
        logger.warning("moving to another NATS node failed: %r", exc)
    finally:
        with contextlib.suppress(nats.errors.Error):
            nc.set_server_pool(pool)
    while not nc.is_connected and time.monotonic() - start < RECONNECT_WAIT_SECONDS:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return nc.is_connected and server_name(nc) is not None
