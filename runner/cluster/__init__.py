"""Serving MCP from several machines: node actors on a Ray cluster, thin front ends that
route each session to the node holding it (`sandgate serve --ray ADDRESS`)."""

from ._frontend import ClusterService
from ._node import NodeSpec, SandgateNode
from ._placement import NodeLoad, choose_node
from ._serve import ClusterUnavailable, serve_cluster

__all__ = [
    "ClusterService",
    "ClusterUnavailable",
    "NodeLoad",
    "NodeSpec",
    "SandgateNode",
    "choose_node",
    "serve_cluster",
]
