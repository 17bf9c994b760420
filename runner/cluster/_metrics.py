"""The front end's `/metrics`: its own figures (calls routed per node, placements, node
losses, infra errors) followed by every live node's own metrics, each sample labelled with
the `node` it came from, so one scrape sees the cluster."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

NODE_LABEL = "node"


class ClusterMetrics:
    """What the front end counts, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.routed = Counter(
            "sandgate_cluster_calls_routed",
            "Tool calls this front end sent to each node.",
            [NODE_LABEL],
            registry=self.registry,
        )
        self.placed = Counter(
            "sandgate_cluster_sessions_placed",
            "Sessions this front end placed on each node (new, or moved off a lost node).",
            [NODE_LABEL],
            registry=self.registry,
        )
        self.node_losses = Counter(
            "sandgate_cluster_node_losses",
            "Nodes this front end saw lost.",
            registry=self.registry,
        )
        self.infra_errors = Counter(
            "sandgate_cluster_infra_errors",
            "Calls answered as infra errors because their node was lost while running them.",
            registry=self.registry,
        )
        self.recovered = Counter(
            "sandgate_cluster_sessions_recovered",
            "Sessions lost with their node, by what came back: snapshot, or lost.",
            ["how"],
            registry=self.registry,
        )
        self.nodes = Gauge(
            "sandgate_cluster_nodes",
            "Nodes with a live actor, as this front end knows them.",
            registry=self.registry,
        )
        self.unanswered = Gauge(
            "sandgate_cluster_metrics_unanswered",
            "Live nodes that did not answer this scrape for their metrics.",
            registry=self.registry,
        )

    def render(self, nodes: Mapping[str, bytes]) -> bytes:
        """This front end's metrics, then each node's (`node id -> its text`), labelled."""
        merged = CollectorRegistry()
        merged.register(_Labelled(nodes))
        return generate_latest(self.registry) + generate_latest(merged)


class _Labelled(Collector):
    def __init__(self, nodes: Mapping[str, bytes]) -> None:
        self._nodes = nodes

    def collect(self) -> Iterator[Metric]:
        return iter(merge_labelled(self._nodes))


def merge_labelled(nodes: Mapping[str, bytes]) -> list[Metric]:
    """One family per metric name over all `nodes`, each sample with a `node` label."""
    families: dict[str, Metric] = {}
    for node, text in sorted(nodes.items()):
        for family in _parse(text.decode("utf-8")):
            if not family.samples:
                continue  # a labelled metric no call has touched yet (nothing to merge)
            into = families.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = into
            into.samples.extend(
                Sample(s.name, {**s.labels, NODE_LABEL: node}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    return list(families.values())


def _parse(text: str) -> Iterable[Metric]:
    return text_string_to_metric_families(text)
