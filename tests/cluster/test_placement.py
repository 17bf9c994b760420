"""Placement of new sessions: a grant's sessions spread over the nodes, capacity respected."""

from __future__ import annotations

from runner.cluster import NodeLoad, choose_node


def test_a_grants_sessions_go_where_it_holds_fewest() -> None:
    nodes = [
        NodeLoad("a", slots=4, sessions={"alice": 2}),
        NodeLoad("b", slots=4, sessions={"alice": 1, "bob": 5}),
    ]
    assert choose_node("alice", nodes) == "b"


def test_ties_go_to_the_least_loaded_node() -> None:
    nodes = [
        NodeLoad("a", slots=4, sessions={"bob": 3}),
        NodeLoad("b", slots=4, sessions={"bob": 1}),
    ]
    assert choose_node("alice", nodes) == "b"


def test_load_is_measured_per_slot() -> None:
    nodes = [
        NodeLoad("small", slots=1, sessions={"bob": 2}),
        NodeLoad("big", slots=8, sessions={"bob": 4}),
    ]
    assert choose_node("alice", nodes) == "big"


def test_runs_in_flight_break_a_tie_of_sessions() -> None:
    nodes = [
        NodeLoad("a", slots=4, running=3),
        NodeLoad("b", slots=4, running=1),
    ]
    assert choose_node("alice", nodes) == "b"


def test_every_front_end_picks_the_same_node_from_the_same_figures() -> None:
    nodes = [NodeLoad("n2", slots=2), NodeLoad("n1", slots=2), NodeLoad("n3", slots=2)]
    assert choose_node("alice", nodes) == "n1"
    assert choose_node("alice", list(reversed(nodes))) == "n1"


def test_a_full_node_takes_no_new_session() -> None:
    nodes = [
        NodeLoad("full", slots=4, sessions={"bob": 2}, max_sessions=2),
        NodeLoad("busy", slots=4, running=4, sessions={"alice": 3, "bob": 9}),
    ]
    assert choose_node("alice", nodes) == "busy"


def test_no_node_with_room_is_none() -> None:
    assert (
        choose_node("alice", [NodeLoad("full", slots=1, sessions={"x": 1}, max_sessions=1)]) is None
    )
    assert choose_node("alice", []) is None


def test_spreading_twelve_sessions_over_three_nodes_gives_four_each() -> None:
    held = {"a": 0, "b": 0, "c": 0}
    for _ in range(12):
        loads = [NodeLoad(n, slots=2, sessions={"alice": k}) for n, k in held.items()]
        chosen = choose_node("alice", loads)
        assert chosen is not None
        held[chosen] += 1
    assert held == {"a": 4, "b": 4, "c": 4}
