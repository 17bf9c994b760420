"""Evaluate policy predicates against a call: missing arguments are false, lists item by item."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ._rules import Predicate, PredicateOp

SPACE_SEPARATED_ARGS = frozenset({("pyodide_install-packages", "package")})
"""(tool, argument) pairs whose string value is a space-separated list, checked item by item."""

MISSING: Any = object()
"""What `resolve` returns for a path the call does not have."""

Quantifier = Literal["every", "any"]


class Subject(NamedTuple):
    """What predicates look at: the tool, its arguments and the caller."""

    tool: str
    args: Mapping[str, Any]
    grant: str
    session: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledPredicate:
    """A predicate ready to evaluate, with the rule path that names it in decisions."""

    rule: str
    path: str
    keys: tuple[str, ...]
    op: PredicateOp
    value: Any
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, pred: Predicate, rule: str) -> CompiledPredicate:
        """Compile `pred`, which sits at `rule` (e.g. `/tools/x/deny_if/0`)."""
        keys = tuple(pred.path.split("."))
        pattern = re.compile(pred.value) if pred.op == "regex" else None
        return cls(rule, pred.path, keys, pred.op, pred.value, pattern)

    def holds(self, subject: Subject, quantifier: Quantifier) -> bool:
        """Whether the predicate is true; for itemized arguments `every` or `any` item."""
        value = resolve(self.keys, subject)
        if value is MISSING:
            return False
        items = items_of(subject.tool, self.keys, value)
        if self.op == "exists":
            return True
        if self.op == "len_lte":
            whole = items if items is not None else value
            return isinstance(whole, str | list | tuple | dict) and len(whole) <= self.value
        if items is None:
            return self._test(value)
        if quantifier == "every":
            return all(self._test(item) for item in items)
        return any(self._test(item) for item in items)

    def _test(self, actual: Any) -> bool:
        op, expected = self.op, self.value
        if op == "eq":
            return _equal(actual, expected)
        if op == "neq":
            return not _equal(actual, expected)
        if op == "in":
            return any(_equal(actual, e) for e in expected)
        if op == "not_in":
            return not any(_equal(actual, e) for e in expected)
        if op == "regex":
            return (
                isinstance(actual, str)
                and self.pattern is not None
                and bool(self.pattern.search(actual))
            )
        if op == "contains":
            if isinstance(actual, str):
                return isinstance(expected, str) and expected in actual
            if isinstance(actual, list | tuple):
                return any(_equal(item, expected) for item in actual)
            return isinstance(actual, dict) and expected in actual
        if not _is_number(actual):
            return False
        if op == "lt":
            return bool(actual < expected)
        if op == "lte":
            return bool(actual <= expected)
        if op == "gt":
            return bool(actual > expected)
        return bool(actual >= expected)


def resolve(keys: Sequence[str], subject: Subject) -> Any:
    """Return the value at `keys` (`("args", "x")`, `("grant",)`...), or `MISSING`."""
    root = keys[0]
    if root == "grant":
        return subject.grant
    if root == "session":
        return subject.session
    if root == "tool":
        return subject.tool
    if root == "roles":
        return list(subject.roles)
    current: Any = subject.args
    for key in keys[1:]:
        if isinstance(current, Mapping) and key in current:
            current = current[key]
        elif isinstance(current, list | tuple) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            return MISSING
    return MISSING if current is None else current


def items_of(tool: str, keys: Sequence[str], value: Any) -> list[Any] | None:
    """The items an argument is checked by, or `None` when it is a single value."""
    if keys[0] != "args":
        return None
    if isinstance(value, list | tuple):
        return list(value)
    if len(keys) == 2 and (tool, keys[1]) in SPACE_SEPARATED_ARGS and isinstance(value, str):
        return value.split()
    return None


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) != isinstance(expected, bool):
        return False
    return bool(actual == expected)
