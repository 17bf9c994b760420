"""Where a new session goes: pure placement over the nodes' reported load.

A grant's sessions are spread: a new one goes to the live node with free capacity where that
grant holds the fewest sessions, ties to the least loaded node (fewest sessions in all, then
fewest runs in flight), then to the node id (so every front end picks the same node from the
same figures). Each node's own service still enforces its run slots and per-grant shares;
placement only decides where a session lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """One node as its actor reports it.

    Attributes:
        node: The Ray node id.
        slots: Runs the node admits at once (its engines' workers).
        running: Runs in flight now.
        sessions: Sessions the node holds, by grant.
        max_sessions: Sessions the node holds at most (`0`: no limit of its own).
    """

    node: str
    slots: int
    running: int = 0
    sessions: Mapping[str, int] = field(default_factory=dict)
    max_sessions: int = 0

    @property
    def held(self) -> int:
        """Sessions held in all."""
        return sum(self.sessions.values())

    @property
    def has_room(self) -> bool:
        """Whether the node takes another session."""
        return self.max_sessions <= 0 or self.held < self.max_sessions


def choose_node(grant: str, nodes: Iterable[NodeLoad]) -> str | None:
    """The node a new session of `grant` goes to; `None` when no node has room.

    Args:
        grant: The grant opening the session.
        nodes: The live nodes' load.
    """
    candidates = [n for n in nodes if n.has_room]
    if not candidates:
        return None
    best = min(
        candidates,
        key=lambda n: (
            n.sessions.get(grant, 0),
            n.held / max(n.slots, 1),
            n.running / max(n.slots, 1),
            n.node,
        ),
    )
    return best.node
