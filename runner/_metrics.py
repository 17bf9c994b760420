"""Prometheus metrics: calls by tool/decision/status, latencies, pools, queue, gate latency."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
GATE_BUCKETS_S = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)

PoolStats = Callable[[], Mapping[str, Mapping[str, int]]]
"""Engine name → its pool figures (`workers`, `idle`, `waiting`, …)."""


class _PoolCollector(Collector):
    def __init__(self, stats: PoolStats) -> None:
        self._stats = stats

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sandgate_pool",
            "Engine pool figures (workers, idle, waiting).",
            labels=["engine", "what"],
        )
        for engine, figures in self._stats().items():
            for what, value in figures.items():
                family.add_metric([engine, what], float(value))
        return [family]


class Metrics:
    """The server's metrics, in a registry of their own (one per server)."""

    def __init__(self, pool_stats: PoolStats | None = None) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "sandgate_calls",
            "Tool calls by tool, decision and run status.",
            ["tool", "decision", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sandgate_call_seconds",
            "Tool call latency by tool and engine.",
            ["tool", "engine"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.gate_latency = Histogram(
            "sandgate_gate_seconds",
            "Time of one gate decision, counter store included.",
            buckets=GATE_BUCKETS_S,
            registry=self.registry,
        )
        self.egress_bytes = Counter(
            "sandgate_egress_bytes",
            "Bytes runs moved through the egress proxy, by grant and direction (up, down).",
            ["grant", "direction"],
            registry=self.registry,
        )
        self.egress_connections = Counter(
            "sandgate_egress_connections",
            "Connections runs asked the egress proxy for, by grant and decision (allow, deny).",
            ["grant", "decision"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "sandgate_calls_in_flight", "Calls being served now.", registry=self.registry
        )
        if pool_stats is not None:
            self.registry.register(_PoolCollector(pool_stats))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
