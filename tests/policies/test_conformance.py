"""Conformance: for each shipped policy and a set of calls, the decision and the deciding rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policies import (
    Allowed,
    AuditLog,
    Denied,
    Gate,
    NeedsApproval,
    SqliteCounterStore,
    ToolCall,
    default_policy_path,
    load_policy,
    load_policy_text,
    shipped_policy_paths,
)
from sandboxes import Program, WorkspacePaths
from tests.clock import FakeClock

HERE = default_policy_path().parent
SEED = (
    '{"version":"1","default":"deny","tools":{"pip_install_package":{"limits":[{"counter":'
    '"pip_install_package_rate","window":"minute","max":10,"scope":"grant"}]}}}'
)
SHIPPED = {
    "default.yaml",
    "python-no-net-no-install.yaml",
    "eval-harness.yaml",
    "policylayer-seed.json",
}
EXECUTION_TOOLS = (
    "run_python_code",
    "save_to_file_and_run",
    "run_python_file",
    "run_code",
    "pyodide_execute",
)

CASES: list[tuple[str, str, dict[str, Any], type, str]] = [
    # policy, tool, args, decision, rule
    (
        "policylayer-seed.json",
        "pip_install_package",
        {"package_name": "numpy"},
        Allowed,
        "/tools/pip_install_package",
    ),
    ("policylayer-seed.json", "run_python_code", {"code": "print(1)"}, Denied, "/default"),
    ("policylayer-seed.json", "pyodide_execute", {"code": "1"}, Denied, "/default"),
    *[
        ("default.yaml", tool, {"code": "print(1)"}, Allowed, f"/tools/{tool}")
        for tool in EXECUTION_TOOLS
    ],
    (
        "default.yaml",
        "pip_install_package",
        {"package_name": "numpy"},
        Allowed,
        "/tools/pip_install_package",
    ),
    (
        "default.yaml",
        "pyodide_install-packages",
        {"package": "numpy pandas"},
        Allowed,
        "/tools/pyodide_install-packages",
    ),
    ("default.yaml", "pyodide_get-mount-points", {}, Allowed, "/tools/pyodide_get-mount-points"),
    (
        "default.yaml",
        "pyodide_list-mounted-directory",
        {"mountName": "data"},
        Allowed,
        "/tools/pyodide_list-mounted-directory",
    ),
    (
        "default.yaml",
        "pyodide_read-image",
        {"mountName": "d", "imagePath": "a.png"},
        Allowed,
        "/tools/pyodide_read-image",
    ),
    ("default.yaml", "shell", {"cmd": "ls"}, Denied, "/default"),
    (
        "default.yaml",
        "run_code",
        {"code": "x" * (1024 * 1024 + 1)},
        Denied,
        "/quotas/max_code_bytes",
    ),
    (
        "python-no-net-no-install.yaml",
        "run_python_code",
        {"code": "1"},
        Allowed,
        "/tools/run_python_code",
    ),
    (
        "python-no-net-no-install.yaml",
        "pyodide_execute",
        {"code": "1"},
        Allowed,
        "/tools/pyodide_execute",
    ),
    (
        "python-no-net-no-install.yaml",
        "pip_install_package",
        {"package_name": "numpy"},
        Denied,
        "/tools/pip_install_package/action",
    ),
    (
        "python-no-net-no-install.yaml",
        "pyodide_install-packages",
        {"package": "numpy"},
        Denied,
        "/tools/pyodide_install-packages/action",
    ),
    (
        "python-no-net-no-install.yaml",
        "pyodide_read-image",
        {"mountName": "d", "imagePath": "a.png"},
        Denied,
        "/default",
    ),
    ("eval-harness.yaml", "run_code", {"code": "1"}, Allowed, "/tools/run_code"),
    ("eval-harness.yaml", "run_python_code", {"code": "1"}, Allowed, "/tools/run_python_code"),
    (
        "eval-harness.yaml",
        "pip_install_package",
        {"package_name": "numpy"},
        Denied,
        "/tools/pip_install_package/action",
    ),
    (
        "eval-harness.yaml",
        "save_to_file_and_run",
        {"file_name": "a.py", "code": "1"},
        Denied,
        "/default",
    ),
    ("eval-harness.yaml", "run_code", {"code": "x" * 300_000}, Denied, "/quotas/max_code_bytes"),
]


def call_for(tool: str, args: dict[str, Any], tmp_path: Path, **extra: Any) -> ToolCall:
    code = args.get("code")
    if isinstance(code, str):
        workspace = WorkspacePaths(tmp_path / "files", tmp_path / "site")
        return ToolCall(tool, args, program=Program("code", code), workspace=workspace, **extra)
    return ToolCall(tool, args, **extra)


@pytest.fixture
def gate_for(tmp_path: Path, clock: FakeClock) -> Any:
    opened: list[tuple[SqliteCounterStore, AuditLog]] = []

    def make(name: str) -> Gate:
        store = SqliteCounterStore(tmp_path / f"{name}.sqlite3")
        audit = AuditLog(tmp_path / f"{name}.jsonl")
        opened.append((store, audit))
        return Gate(load_policy(HERE / name), store, audit, clock=clock)

    yield make
    for store, audit in opened:
        store.close()
        audit.close()


def test_every_shipped_policy_is_listed_loads_cleanly_and_says_what_it_allows() -> None:
    assert {p.name for p in shipped_policy_paths()} == SHIPPED
    assert default_policy_path() == HERE / "default.yaml"
    for path in shipped_policy_paths():
        policy = load_policy(path)
        assert policy.warnings == (), path.name
        if path.name != "policylayer-seed.json":  # the seed is kept verbatim
            assert policy.description, path.name


def test_the_shipped_seed_is_the_policylayer_seed_verbatim() -> None:
    assert (HERE / "policylayer-seed.json").read_text().strip() == SEED
    shipped = load_policy(HERE / "policylayer-seed.json")
    assert load_policy_text(SEED).model_dump() == shipped.model_dump()


@pytest.mark.parametrize(
    ("policy", "tool", "args", "kind", "rule"), CASES, ids=[f"{c[0]}:{c[1]}:{c[4]}" for c in CASES]
)
def test_decision_and_deciding_rule(
    gate_for: Any,
    tmp_path: Path,
    policy: str,
    tool: str,
    args: dict[str, Any],
    kind: type,
    rule: str,
) -> None:
    decision = gate_for(policy).decide(call_for(tool, args, tmp_path))
    assert (type(decision), decision.rule) == (kind, rule)
    if isinstance(decision, Denied):
        assert decision.reason


def test_seed_allows_ten_installs_a_minute_per_grant(gate_for: Any, clock: FakeClock) -> None:
    gate = gate_for("policylayer-seed.json")
    install = ToolCall("pip_install_package", {"package_name": "numpy"}, grant="alice")
    for _ in range(10):
        decision = gate.decide(install)
        assert isinstance(decision, Allowed)
        gate.finish(decision, outcome="completed", status="ok")
        clock.advance(1)
    eleventh = gate.decide(install)
    assert isinstance(eleventh, Denied)
    assert eleventh.rule == "/tools/pip_install_package/limits/pip_install_package_rate"
    assert "pip_install_package_rate" in eleventh.reason
    assert eleventh.retry_after_s == pytest.approx(50, abs=0.2)  # when the first one slides out
    other_grant = ToolCall("pip_install_package", {"package_name": "numpy"}, grant="bob")
    assert isinstance(gate.decide(other_grant), Allowed)
    clock.advance(49)
    assert isinstance(gate.decide(install), Denied)
    clock.advance(1)
    assert isinstance(gate.decide(install), Allowed)


def test_default_policy_shares_one_execution_budget(gate_for: Any, tmp_path: Path) -> None:
    gate = gate_for("default.yaml")
    for i in range(120):
        tool = EXECUTION_TOOLS[i % len(EXECUTION_TOOLS)]
        assert isinstance(gate.decide(call_for(tool, {"code": "1"}, tmp_path)), Allowed)
    denied = gate.decide(call_for("run_code", {"code": "1"}, tmp_path))
    assert isinstance(denied, Denied)
    assert denied.rule == "/tools/run_code/limits/executions"
    assert isinstance(gate.decide(call_for("pyodide_get-mount-points", {}, tmp_path)), Allowed)


def test_default_policy_counts_each_pyodide_package(gate_for: Any) -> None:
    gate = gate_for("default.yaml")
    six = ToolCall("pyodide_install-packages", {"package": "a b c d e f"})
    assert isinstance(gate.decide(six), Allowed)
    denied = gate.decide(six)
    assert isinstance(denied, Denied)
    assert denied.rule == "/tools/pyodide_install-packages/limits/installs"
    assert isinstance(
        gate.decide(ToolCall("pip_install_package", {"package_name": "x"})), Allowed
    )  # 7 of 10 used


def test_install_tools_are_hidden_only_where_the_policy_hides_them(gate_for: Any) -> None:
    names = ["run_python_code", "pip_install_package", "pyodide_install-packages", "shell"]
    assert gate_for("python-no-net-no-install.yaml").visible_tools(names) == [
        "run_python_code",
        "shell",
    ]
    assert gate_for("default.yaml").visible_tools(names) == names


def test_eval_harness_uses_short_timeouts(gate_for: Any, tmp_path: Path) -> None:
    decision = gate_for("eval-harness.yaml").decide(call_for("run_code", {"code": "1"}, tmp_path))
    assert isinstance(decision, Allowed) and decision.plan is not None
    assert decision.plan.limits.wall_timeout_s == 10.0
    assert decision.plan.engine == "wasm"


def test_no_shipped_policy_asks_for_approval(gate_for: Any, tmp_path: Path) -> None:
    for policy, tool, args, _, _ in CASES:
        assert not isinstance(
            gate_for(policy).decide(call_for(tool, args, tmp_path)), NeedsApproval
        )
