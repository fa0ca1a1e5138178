"""Gateways spread over the NATS nodes again after one returns (natsbalance.py): the plan."""

from __future__ import annotations

import random

from parley_gateway.natsbalance import MEMORY_SECONDS, Balancer, move_probability


def test_after_two_kills_the_crowded_node_sheds_just_its_excess() -> None:
    # Six gateways all on nats-1, nats-2 and nats-3 back (known, empty): share 2 each.
    counts = {"nats-1": 6, "nats-2": 0, "nats-3": 0}
    p = move_probability("nats-1", counts)
    assert p == 4 / 6  # on average 4 of the 6 move
    assert move_probability("nats-2", counts) == 0.0


def test_a_balanced_or_nearly_balanced_cluster_does_not_move() -> None:
    assert move_probability("nats-1", {"nats-1": 2, "nats-2": 2, "nats-3": 2}) == 0.0
    # 7 over 3: share 3; nobody is below... 3/2/2 is as even as it gets
    assert move_probability("nats-1", {"nats-1": 3, "nats-2": 2, "nats-3": 2}) == 0.0
    assert move_probability("nats-1", {"nats-1": 1}) == 0.0  # one node: nowhere to go


def test_a_returned_node_counts_while_remembered() -> None:
    b = Balancer(random.Random(1))
    assert b.counts(["nats-1", "nats-2", "nats-3"], now=0.0) == {
        "nats-1": 1,
        "nats-2": 1,
        "nats-3": 1,
    }
    # nats-3 died, its gateway failed over; nats-3 is back with none: still counted (0).
    assert b.counts(["nats-1", "nats-2", "nats-1"], now=60.0) == {
        "nats-1": 2,
        "nats-2": 1,
        "nats-3": 0,
    }
    # Long gone: forgotten.
    assert "nats-3" not in b.counts(["nats-1", "nats-2"], now=60.0 + MEMORY_SECONDS + 1)


def test_the_expected_spread_after_the_moves() -> None:
    rng = random.Random(7)
    counts = {"nats-1": 30, "nats-2": 0, "nats-3": 0}
    p = move_probability("nats-1", counts)
    moved = sum(rng.random() < p for _ in range(30))
    assert 12 <= moved <= 28  # about 20 of 30 leave nats-1
