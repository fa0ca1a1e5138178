"""Gateways spread over the NATS nodes again after a node returns (issue 19).

A killed node's clients fail over to the others and, left alone, never move back: after two
kills every gateway sat on one node, and the next kill took every connection at once. Each
gateway writes the name of the NATS node it is connected to into its heartbeat (instances
bucket); at every presence refresh it counts the gateways per node (every node one was seen
on in the last ``MEMORY_SECONDS``: a returned node with no gateway yet counts as 0) and, if
its own node holds more than its share (``ceil(gateways / nodes)``) while another holds
less, moves with probability ``excess / count`` — so that on average just the excess moves
— to another node: the pool without the current node, a forced reconnect, the pool back.
A gateway moves at most once per ``MIN_INTERVAL_SECONDS`` (a dead node still remembered
would otherwise draw moves that land elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

logger = logging.getLogger(__name__)

MEMORY_SECONDS = 600.0
MIN_INTERVAL_SECONDS = 60.0
RECONNECT_WAIT_SECONDS = 10.0


def server_name(nc: NATS | None) -> str | None:
    """The name of the node this client is connected to (its INFO's ``server_name``)."""
    if nc is None or not nc.is_connected:
        return None
    info: Any = getattr(nc, "_server_info", None)  # nats-py keeps the INFO only privately
    name = info.get("server_name") if isinstance(info, dict) else None
    return str(name) if name else None


def move_probability(mine: str, counts: Mapping[str, int]) -> float:
    """How likely this gateway (on node ``mine``) should move to spread the gateways evenly
    over the nodes in ``counts`` (gateways per node, 0 for a node known but empty)."""
    total = sum(counts.values())
    if len(counts) < 2 or total < 2:
        return 0.0
    share = math.ceil(total / len(counts))
    here = counts.get(mine, 0)
    if here <= share or min(counts.values()) >= share:
        return 0.0
    return (here - share) / here


class Balancer:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._seen: dict[str, float] = {}  # node name -> time.monotonic() a gateway was on it
        self._moved_at = -math.inf
        self.moves = 0

    def counts(self, nodes_of_gateways: list[str], now: float) -> dict[str, int]:
        for name in nodes_of_gateways:
            self._seen[name] = now
        known = [n for n, at in self._seen.items() if now - at <= MEMORY_SECONDS]
        counts = dict.fromkeys(known, 0)
        for name in nodes_of_gateways:
            counts[name] += 1
        return counts

    async def maybe_move(self, nc: NATS | None, nodes_of_gateways: list[str]) -> bool:
        """Given the node of every live gateway (this one included): move or not."""
        now = time.monotonic()
        mine = server_name(nc)
        counts = self.counts(nodes_of_gateways, now)
        if nc is None or mine is None or now - self._moved_at < MIN_INTERVAL_SECONDS:
            return False
        if self._rng.random() >= move_probability(mine, counts):
            return False
        self._moved_at = now
        logger.info("NATS node %s holds more than its share of gateways %s: moving", mine, counts)
        moved = await _reconnect_elsewhere(nc)
        self.moves += int(moved)
        return moved


async def _reconnect_elsewhere(nc: NATS) -> bool:
    current = nc.connected_url
    if current is None:
        return False
    pool = [u.geturl() for u in nc.servers]
    others = [
        u.geturl() for u in nc.servers if (u.hostname, u.port) != (current.hostname, current.port)
    ]
    if not others:
        return False
    try:
        nc.set_server_pool(others)
        await nc.force_reconnect()
        deadline = time.monotonic() + RECONNECT_WAIT_SECONDS
        while not nc.is_connected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    except nats.errors.Error as exc:
        logger.warning("moving to another NATS node failed: %r", exc)
    finally:
        with contextlib.suppress(nats.errors.Error):
            nc.set_server_pool(pool)
    return nc.is_connected and server_name(nc) is not None
