"""Prometheus metrics of one gateway instance (own registry, names prefixed parley_gateway_)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "parley_gateway_connections", "Open WebSocket connections", ["kind"], registry=r
        )
        self.connections_total = Counter(
            "parley_gateway_connections_opened_total",
            "WebSocket connections accepted",
            ["resumed"],
            registry=r,
        )
        self.kv_unavailable = Counter(
            "parley_gateway_kv_unavailable_total",
            "Reads of a KV bucket answered degraded (bucket unavailable), by bucket",
            ["bucket"],
            registry=r,
        )
        self.auth_failures = Counter(
            "parley_gateway_auth_failures_total", "Upgrades refused with 401", registry=r
        )
        self.closes = Counter(
            "parley_gateway_closes_total", "Connections closed by the gateway", ["code"], registry=r
        )
        self.commands = Counter(
            "parley_gateway_commands_total",
            "Commands received, by event and outcome",
            ["event", "outcome"],
            registry=r,
        )
        self.command_latency = Histogram(
            "parley_gateway_command_latency_seconds",
            "Time from a command's arrival to its reply",
            ["event"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.deliveries = Counter(
            "parley_gateway_deliveries_total", "Frames written to client sockets", registry=r
        )
        self.events_in = Counter(
            "parley_gateway_events_received_total",
            "Frames received from NATS, by kind",
            ["kind"],
            registry=r,
        )
        self.drops = Counter(
            "parley_gateway_drops_total",
            "Frames not delivered, by reason (duplicate, closed, skipped_gap, bad_frame)",
            ["reason"],
            registry=r,
        )
        self.gap_fills = Counter(
            "parley_gateway_gap_fills_total",
            "Missing seq ranges fetched from the store",
            registry=r,
        )
        self.request_retries = Counter(
            "parley_gateway_request_retries_total",
            "Service requests sent again after no answer (retried), given up after retries, or "
            "sent to any replica because their conversation's partition had no owner (fallback)",
            ["outcome"],
            registry=r,
        )
        self.subscriptions = Gauge(
            "parley_gateway_conversation_subscriptions",
            "Conversations this instance is subscribed to",
            registry=r,
        )
        # Counted as plain ints on the hot path, moved into the counters at scrape time.
        self.delivered = 0
        self._delivered_synced = 0
        self.slow_consumers = Counter(
            "parley_gateway_slow_consumers_total", "Clients closed with 1013", registry=r
        )
        self.http_refusals = Counter(
            "parley_gateway_http_refusals_total",
            "HTTP connections answered and closed by the front itself, by reason "
            "(head_timeout, body_timeout, head_too_large, bad_request)",
            ["reason"],
            registry=r,
        )
        self.origin_refusals = Counter(
            "parley_gateway_origin_refusals_total",
            "WebSocket upgrades refused for their Origin header",
            registry=r,
        )
        self.evictions = Counter(
            "parley_gateway_evictions_total",
            "Connections dropped from a conversation whose audience no longer admits them",
            registry=r,
        )
        self.send_batch = Histogram(
            "parley_gateway_send_batch_messages",
            "Messages per batched message:send request (a connection's sends to one "
            "conversation queued behind one in flight)",
            buckets=(2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.rejoin_batch = Histogram(
            "parley_gateway_rejoin_batch_principals",
            "Principals per batched rejoin request (resumed sessions, one conversation)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 500),
            registry=r,
        )

    def sync(self) -> None:
        """Move the hot-path tallies into their Prometheus counters (before a scrape)."""
        delivered = self.delivered
        self.deliveries.inc(delivered - self._delivered_synced)
        self._delivered_synced = delivered
