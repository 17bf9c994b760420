"""The public API of `policies`: sorted, complete, one exception root, one-way imports."""

from __future__ import annotations

import ast
from pathlib import Path

import policies
from policies import (
    AuditUnavailable,
    PolicyError,
    PolicyLoadError,
    Problem,
    StateUnavailable,
    UnknownApproval,
)

PACKAGE = Path(policies.__file__).parent
RUNNER_NEEDS = {
    "RESERVED_MOUNT_NAME",
    "mount_name_problem",
    "PolicyError",
    "PolicyLoadError",
    "StateUnavailable",
    "Policy",
    "load_policy",
    "load_policy_text",
    "default_policy_path",
    "shipped_policy_paths",
    "Gate",
    "ToolCall",
    "Allowed",
    "Denied",
    "NeedsApproval",
    "Decision",
    "CounterStore",
    "SqliteCounterStore",
    "RedisCounterStore",
    "open_counter_store",
    "AuditLog",
    "AuditRecord",
    "read_audit",
    "policy_json_schema",
    "state_dir_default",
}


def test_all_holds_what_the_runner_needs() -> None:  # its order: tests/test_exports.py
    assert set(policies.__all__) >= RUNNER_NEEDS
    for name in policies.__all__:
        assert hasattr(policies, name), name


def test_every_exception_has_the_one_root() -> None:
    for cls in (PolicyLoadError, StateUnavailable, UnknownApproval, AuditUnavailable):
        assert issubclass(cls, PolicyError)
    error = PolicyLoadError([Problem("tools.x", "bad", 3, 4)], source="p.yaml")
    assert error.problems[0].format(error.source) == "p.yaml:3:4: tools.x: bad"


def test_policies_imports_only_sandboxes_value_types() -> None:
    for module in PACKAGE.glob("*.py"):
        tree = ast.parse(module.read_text())
        assert ast.get_docstring(tree), module.name
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith(("runner", "mcp")), module.name
                if node.module.startswith("sandboxes"):
                    assert node.module == "sandboxes", module.name
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith(("runner", "mcp", "sandboxes")), module.name


def test_problems_read_well_in_logs() -> None:
    assert str(Problem("tools.x.action", "bad", 3, 4)) == "line 3, column 4: tools.x.action: bad"
    assert str(Problem("", "unreadable")) == "<file>: unreadable"
