"""The conversation service's Prometheus metrics (one registry per replica, served at /metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class ReadCounter(Collector):
    """A counter read when scraped (``set_function``, as a Gauge has), for a count kept as a
    plain int on the hot path: ``Counter.inc`` takes a lock per event."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._read: Callable[[], float] = lambda: 0.0
        registry.register(self)

    def set_function(self, read: Callable[[], float]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class Metrics:
    def __init__(self) -> None:
        self._served: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "parley_conversation_requests_total",
            "Requests handled, by operation and outcome (ok or error code).",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "parley_conversation_request_seconds",
            "Time from request received to reply sent.",
            ["operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.batch = Histogram(
            "parley_conversation_batch_size",
            "Durable writes committed together (group commit).",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "parley_conversation_in_flight",
            "Requests being handled right now.",
            registry=self.registry,
        )
        self.projection_failures = Counter(
            "parley_conversation_projection_failures_total",
            "Batches whose messages or totals could not be written after their events were.",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "parley_conversation_publish_failures_total",
            "Frames stored but not published live (gateways gap-fill them).",
            registry=self.registry,
        )
        self.agent_turn_failures = Counter(
            "parley_conversation_agent_turn_publish_failures_total",
            "Attempts to publish an agent turn that JetStream did not acknowledge (retried).",
            registry=self.registry,
        )
        # Conversation affinity (docs/affinity.md).
        self.seq_collisions = Counter(
            "parley_conversation_seq_collisions",
            "Log inserts refused because another writer had taken the seq (retried with the "
            "next free one): rare when each conversation has one writer.",
            registry=self.registry,
        )
        self.owned_partitions = Gauge(
            "parley_conversation_owned_partitions",
            "Conversation partitions this replica owns (writes of their conversations).",
            registry=self.registry,
        )
        self.partition_moves = Counter(
            "parley_conversation_partition_moves",
            "Partition leases acquired, released (hand-off, stop) or lost (expired, taken).",
            ["how"],
            registry=self.registry,
        )
        # The partition owner's authorization cache (authcache.py), read when scraped.
        self.auth_cache_hits = ReadCounter(
            "parley_conversation_auth_cache_hits",
            "Conversations of a write batch authorized from the cached document (no store read).",
            self.registry,
        )
        self.auth_cache_misses = ReadCounter(
            "parley_conversation_auth_cache_misses",
            "Conversations of a write batch read from the store instead (not cached, or stale).",
            self.registry,
        )
        self.auth_cache_entries = Gauge(
            "parley_conversation_auth_cache_entries",
            "Conversations in the owner's authorization cache.",
            registry=self.registry,
        )

    def served(self, operation: str, outcome: str, seconds: float) -> None:
        """One request answered. The labelled children are looked up once per (operation,
        outcome): ``labels()`` validates and locks on every call."""
        key = (operation, outcome)
        children = self._served.get(key)
        if children is None:
            children = self._served[key] = (
                self.requests.labels(operation, outcome),
                self.latency.labels(operation),
            )
        children[0].inc()
        children[1].observe(seconds)
