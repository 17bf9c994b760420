"""Predicates: every op, missing arguments are false, list arguments item by item."""

from __future__ import annotations

from typing import Any

import pytest

from policies._predicates import CompiledPredicate, Subject
from policies._rules import Predicate


def holds(
    op: str,
    value: Any,
    args: dict[str, Any],
    *,
    path: str = "args.x",
    tool: str = "run_code",
    quantifier: str = "any",
    roles: tuple[str, ...] = (),
) -> bool:
    pred = CompiledPredicate.of(Predicate(path=path, op=op, value=value), "/r")  # type: ignore[arg-type]
    return pred.holds(Subject(tool, args, "alice", "s1", roles), quantifier)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        ("eq", 3, 3, True),
        ("eq", 3, 4, False),
        ("eq", True, 1, False),
        ("eq", 1, True, False),
        ("neq", "a", "b", True),
        ("neq", "a", "a", False),
        ("in", ["a", "b"], "a", True),
        ("in", ["a", "b"], "c", False),
        ("not_in", ["a", "b"], "c", True),
        ("not_in", ["a", "b"], "a", False),
        ("lt", 5, 4, True),
        ("lt", 5, 5, False),
        ("lte", 5, 5, True),
        ("lte", 5, 6, False),
        ("gt", 5, 6, True),
        ("gt", 5, 5, False),
        ("gte", 5, 5, True),
        ("gte", 5, 4.9, False),
        ("lt", 5, "4", False),
        ("gt", 0, True, False),
        ("regex", r"^num", "numpy", True),
        ("regex", r"^num", "scinum", False),
        ("regex", r"socket", "import socket", True),
        ("regex", "x", 5, False),
        ("contains", "socket", "import socket", True),
        ("contains", "os", "print(1)", False),
        ("contains", "k", {"k": 1}, True),
        ("exists", None, 0, True),
        ("exists", None, "", True),
        ("len_lte", 3, "abc", True),
        ("len_lte", 3, "abcd", False),
        ("len_lte", 1, 7, False),
    ],
)
def test_each_op(op: str, value: Any, actual: Any, expected: bool) -> None:
    assert holds(op, value, {"x": actual}) is expected


@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("eq", 1),
        ("neq", 1),
        ("in", [1]),
        ("not_in", [1]),
        ("lt", 1),
        ("lte", 1),
        ("gt", 1),
        ("gte", 1),
        ("regex", "."),
        ("contains", "a"),
        ("exists", None),
        ("len_lte", 5),
    ],
)
def test_a_missing_argument_is_false_for_every_op(op: str, value: Any) -> None:
    assert holds(op, value, {}) is False
    assert holds(op, value, {"x": None}) is False  # null counts as missing
    assert holds(op, value, {}, quantifier="every") is False


def test_nested_paths_and_list_indexes() -> None:
    args = {"opts": {"level": 3, "files": ["a.py", "b.py"]}}
    assert holds("eq", 3, args, path="args.opts.level")
    assert holds("eq", "b.py", args, path="args.opts.files.1")
    assert not holds("exists", None, args, path="args.opts.files.5")
    assert not holds("exists", None, args, path="args.opts.level.deeper")


def test_list_arguments_are_checked_item_by_item() -> None:
    args = {"x": ["numpy", "pandas", "evil-pkg"]}
    assert holds("in", ["numpy", "pandas"], args, quantifier="any")  # deny_if: any item
    assert not holds("in", ["numpy", "pandas"], args, quantifier="every")  # require: every
    assert holds("regex", "^[a-z]+(-[a-z]+)?$", args, quantifier="every")
    assert holds("in", ["a"], {"x": []}, quantifier="every")  # nothing to refuse
    assert not holds("in", ["a"], {"x": []}, quantifier="any")


def test_pyodide_package_string_is_a_list_of_names() -> None:
    args = {"package": "numpy  pandas requests"}
    pkg = "args.package"
    tool = "pyodide_install-packages"
    assert holds("eq", "requests", args, path=pkg, tool=tool, quantifier="any")
    assert not holds("in", ["numpy", "pandas"], args, path=pkg, tool=tool, quantifier="every")
    assert holds("len_lte", 3, args, path=pkg, tool=tool)  # three names
    assert not holds("len_lte", 2, args, path=pkg, tool=tool)
    # Other tools' string arguments stay whole strings.
    assert not holds("eq", "requests", args, path=pkg, tool="run_code")


def test_len_lte_looks_at_the_whole_list() -> None:
    assert holds("len_lte", 2, {"x": ["a", "b"]})
    assert not holds("len_lte", 1, {"x": ["a", "b"]})


def test_caller_paths() -> None:
    assert holds("eq", "alice", {}, path="grant")
    assert holds("eq", "s1", {}, path="session")
    assert holds("eq", "run_code", {}, path="tool")
    assert holds("contains", "admin", {}, path="roles", roles=("admin", "eval"), quantifier="every")
    assert not holds("contains", "admin", {}, path="roles", quantifier="every")
