"""The gate's decisions: order of checks, quotas and plans, counters, modes, grants, failures."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from policies import (
    Allowed,
    AuditLog,
    CounterSpec,
    Denied,
    Gate,
    PolicyLoadError,
    RedisCounterStore,
    SqliteCounterStore,
    ToolCall,
    load_policy_text,
    read_audit,
)
from sandboxes import Program, WorkspacePaths
from tests.clock import FakeClock

from .conftest import GateFactory

MIB = 1024 * 1024


def run(tmp_path: Path, code: str = "print(1)", tool: str = "run_code", **extra: Any) -> ToolCall:
    workspace = WorkspacePaths(tmp_path / "files", tmp_path / "site")
    return ToolCall(
        tool,
        {"code": code, **extra.pop("args", {})},
        program=Program("code", code),
        workspace=workspace,
        **extra,
    )


def rule_of(gate: Gate, call: ToolCall) -> str:
    return gate.decide(call).rule


def test_checks_run_in_order_hide_schema_predicates_size(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate("""
        hide: [save_to_file_and_run]
        tools:
          save_to_file_and_run: {}
          run_code:
            args_schema: {type: object, properties: {code: {type: string, maxLength: 50}}}
            require: [{path: args.code, op: exists}]
            deny_if: [{path: args.code, op: contains, value: socket}]
            quotas: {max_code_bytes: 20}
    """)
    assert rule_of(gate, run(tmp_path, tool="save_to_file_and_run")) == "/hide"
    assert rule_of(gate, run(tmp_path, "x" * 60)) == "/tools/run_code/args_schema"
    assert rule_of(gate, ToolCall("run_code", {})) == "/tools/run_code/require/0"
    assert rule_of(gate, run(tmp_path, "import socket")) == "/tools/run_code/deny_if/0"
    assert rule_of(gate, run(tmp_path, "é" * 11)) == "/tools/run_code/quotas/max_code_bytes"
    assert rule_of(gate, run(tmp_path, "print(1)")) == "/tools/run_code"


def test_args_schema_reason_names_the_argument(make_gate: GateFactory) -> None:
    gate = make_gate(
        "tools: {pip_install_package: {args_schema: {type: object, properties: "
        "{package_name: {type: string, pattern: '^[a-z]+$'}}}}}"
    )
    denied = gate.decide(ToolCall("pip_install_package", {"package_name": "--index-url=x"}))
    assert isinstance(denied, Denied)
    assert "package_name" in denied.reason


def test_actions_of_all_tools_and_the_tool(make_gate: GateFactory) -> None:
    gate = make_gate("""
        default: allow
        all_tools: {action: allow}
        tools:
          run_code: {action: deny, reason: Use run_python_code.}
          pip_install_package: {action: hide}
    """)
    denied = gate.decide(ToolCall("run_code", {}))
    assert isinstance(denied, Denied)
    assert (denied.rule, denied.reason) == ("/tools/run_code/action", "Use run_python_code.")
    assert rule_of(gate, ToolCall("pip_install_package", {})) == "/tools/pip_install_package/action"
    assert rule_of(gate, ToolCall("anything_else", {})) == "/default"  # allowed by default
    assert isinstance(gate.decide(ToolCall("anything_else", {})), Allowed)
    blocked = make_gate("all_tools: {action: deny, reason: maintenance}\ntools: {run_code: {}}")
    assert rule_of(blocked, ToolCall("run_code", {})) == "/all_tools/action"


@pytest.mark.parametrize(
    ("requested", "wall"),
    [
        (None, 20.0),
        (5.0, 5.0),
        (20.0, 20.0),
        (100.0, 20.0),
        (0.0, 20.0),
        (-3.0, 20.0),
        (math.nan, 20.0),
        (math.inf, 20.0),
    ],
)
def test_requested_timeout_is_clamped_to_the_ceiling(
    make_gate: GateFactory, tmp_path: Path, requested: float | None, wall: float
) -> None:
    gate = make_gate("tools: {run_code: {quotas: {timeout_s: 20}}}")
    decision = gate.decide(run(tmp_path, requested_timeout_s=requested))
    assert isinstance(decision, Allowed) and decision.plan is not None
    assert decision.plan.limits.wall_timeout_s == wall
    (record,) = read_audit(tmp_path / "audit.jsonl")
    assert record.limits == dataclasses.asdict(decision.plan.limits)  # what the run really got


def test_quotas_inherit_builtin_policy_engine_tool(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate("""
        quotas: {memory_mb: 256, cpu_s: 5}
        engines:
          sealed: {kind: container, runtime: runsc, quotas: {memory_mb: 128, processes: 8}}
        tools:
          run_code: {engine: sealed, quotas: {processes: 4, network: mirror}}
          run_python_code: {}
    """)
    plan = gate.decide(run(tmp_path)).plan  # type: ignore[union-attr]
    assert plan is not None
    assert (plan.engine, plan.profile) == ("container", "sealed")
    limits = plan.limits
    assert (limits.wall_timeout_s, limits.cpu_time_s, limits.memory_bytes) == (30.0, 5, 128 * MIB)
    assert (limits.processes, limits.network, limits.output_bytes) == (4, "mirror", MIB)
    assert limits.workspace_bytes == 256 * MIB
    other = gate.decide(run(tmp_path, tool="run_python_code")).plan  # type: ignore[union-attr]
    assert other is not None
    assert (other.engine, other.profile, other.limits.memory_bytes) == ("wasm", "wasm", 256 * MIB)


def test_max_code_bytes_names_where_the_ceiling_comes_from(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate(
        "engines: {small: {kind: wasm, quotas: {max_code_bytes: 4}}}\n"
        "tools: {run_code: {engine: small}}"
    )
    assert rule_of(gate, run(tmp_path, "12345")) == "/engines/small/quotas/max_code_bytes"


def test_file_programs_are_not_size_checked(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate("quotas: {max_code_bytes: 1}\ntools: {run_python_file: {}}")
    workspace = WorkspacePaths(tmp_path, tmp_path)
    call = ToolCall(
        "run_python_file",
        {"file_name": "long_name.py"},
        program=Program("file", "long_name.py"),
        workspace=workspace,
    )
    assert isinstance(gate.decide(call), Allowed)


def test_a_program_needs_a_workspace() -> None:
    with pytest.raises(ValueError, match="workspace"):
        ToolCall("run_code", {"code": "1"}, program=Program("code", "1"))


LIMITED = """
    limits: [{counter: everything, window: minute, max: 100, scope: global}]
    all_tools:
      limits: [{counter: per_session, window: minute, max: 100, scope: session}]
    tools:
      run_code:
        deny_if: [{path: args.code, op: contains, value: socket}]
        require: [{path: args.code, op: exists}]
        limits: [{counter: runs, window: minute, max: 2, scope: grant}]
"""


def test_denied_calls_consume_no_counter(
    make_gate: GateFactory, sqlite_store: SqliteCounterStore, clock: FakeClock, tmp_path: Path
) -> None:
    gate = make_gate(LIMITED)
    assert isinstance(gate.decide(run(tmp_path, "import socket")), Denied)
    for _ in range(2):
        assert isinstance(gate.decide(run(tmp_path)), Allowed)
    third = gate.decide(run(tmp_path))
    assert isinstance(third, Denied) and third.rule == "/tools/run_code/limits/runs"
    # Only the two allowed calls counted, on every counter of the call.
    assert sqlite_store.used(CounterSpec("everything|global=*", 60, 100), clock())[0] == 2
    assert sqlite_store.used(CounterSpec("per_session|session=local", 60, 100), clock())[0] == 2


def test_infra_error_rolls_back_and_completed_keeps(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate("tools: {run_code: {limits: [{counter: runs, window: hour, max: 1}]}}")
    first = gate.decide(run(tmp_path))
    assert isinstance(first, Allowed) and first.reservation is not None
    gate.finish(first, outcome="infra_error", error="EngineCrashed: guest died")
    second = gate.decide(run(tmp_path))
    assert isinstance(second, Allowed)
    gate.finish(second, outcome="completed", status="error")  # the user's code failed: counts
    assert isinstance(gate.decide(run(tmp_path)), Denied)


def test_counter_scopes(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate("""
        default: allow
        tools:
          run_code: {limits: [{counter: c, window: minute, max: 1, scope: session}]}
          run_python_code: {limits: [{counter: t, window: minute, max: 1, scope: tool}]}
    """)
    assert isinstance(gate.decide(run(tmp_path, session="s1")), Allowed)
    assert isinstance(gate.decide(run(tmp_path, session="s1", grant="other")), Denied)
    assert isinstance(gate.decide(run(tmp_path, session="s2")), Allowed)
    assert isinstance(gate.decide(run(tmp_path, tool="run_python_code", grant="a")), Allowed)
    assert isinstance(gate.decide(run(tmp_path, tool="run_python_code", grant="b")), Denied)


def test_increment_from_an_argument(make_gate: GateFactory) -> None:
    gate = make_gate(
        "tools: {x_tool: {limits: [{counter: rows, window: minute, max: 10, "
        "increment_from: args.rows}]}}"
    )
    assert isinstance(gate.decide(ToolCall("x_tool", {"rows": 6})), Allowed)
    assert isinstance(gate.decide(ToolCall("x_tool", {"rows": [1, 2, 3]})), Allowed)
    assert isinstance(gate.decide(ToolCall("x_tool", {})), Allowed)  # missing: increment 1
    full = gate.decide(ToolCall("x_tool", {"rows": 1}))
    assert isinstance(full, Denied) and full.rule == "/tools/x_tool/limits/rows"
    bad = gate.decide(ToolCall("x_tool", {"rows": -4}))
    assert isinstance(bad, Denied) and "rows" in bad.reason
    too_big = make_gate(
        "tools: {x_tool: {limits: [{counter: r2, window: minute, max: 3, "
        "increment_from: args.rows}]}}"
    ).decide(ToolCall("x_tool", {"rows": 9}))
    assert isinstance(too_big, Denied) and too_big.retry_after_s is None


def test_audit_mode_allows_and_records_would_deny(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate(
        "mode: audit\ntools: {run_code: {limits: [{counter: r, window: minute, max: 1}]}}"
    )
    assert isinstance(gate.decide(run(tmp_path)), Allowed)
    would = gate.decide(run(tmp_path))
    assert isinstance(would, Allowed)
    assert would.would_deny
    assert (would.rule, would.mode, would.reservation) == (
        "/tools/run_code/limits/r",
        "audit",
        None,
    )
    unknown = gate.decide(ToolCall("shell", {}))
    assert isinstance(unknown, Allowed) and unknown.rule == "/default"
    decisions = [r.decision for r in read_audit(tmp_path / "audit.jsonl")]
    assert decisions == ["allow", "would_deny", "would_deny"]


def test_off_mode_and_per_tool_override(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate("""
        mode: off
        hide: [pip_install_package]
        tools:
          run_code: {mode: enforce, deny_if: [{path: args.code, op: contains, value: os}]}
    """)
    assert isinstance(gate.decide(ToolCall("pip_install_package", {"package_name": "x"})), Allowed)
    assert isinstance(gate.decide(run(tmp_path, "import os")), Denied)
    assert gate.visible_tools(["pip_install_package", "run_code"]) == [
        "pip_install_package",
        "run_code",
    ]
    records = list(read_audit(tmp_path / "audit.jsonl"))
    assert [(r.decision, r.mode) for r in records] == [("allow", "off"), ("deny", "enforce")]


def test_authenticate_by_token_hash(make_gate: GateFactory) -> None:
    import hashlib

    digest = hashlib.sha256(b"s3cret-token").hexdigest()
    gate = make_gate(f"grants: {{ci: {{token_sha256: {digest.upper()}, roles: [eval]}}}}")
    assert gate.authenticate("s3cret-token") == "ci"
    assert gate.authenticate("wrong") is None
    assert gate.authenticate("") is None


def test_roles_of_the_grant_feed_predicates(make_gate: GateFactory) -> None:
    digest = "0" * 64
    gate = make_gate(f"""
        grants: {{admin: {{token_sha256: '{digest}', roles: [admin]}}}}
        tools: {{pip_install_package: {{require: [{{path: roles, op: contains, value: admin}}]}}}}
    """)
    call = ToolCall("pip_install_package", {"package_name": "x"})
    assert isinstance(gate.decide(call), Denied)
    assert isinstance(gate.decide(ToolCall(call.tool, call.args, grant="admin")), Allowed)


def test_unreachable_redis_denies_with_state_rule(
    audit: AuditLog, clock: FakeClock, tmp_path: Path
) -> None:
    policy = load_policy_text(
        "tools: {run_code: {limits: [{counter: r, window: minute, max: 5}]}, run_python_code: {}}"
    )
    gate = Gate(
        policy, RedisCounterStore("redis://127.0.0.1:1/0", timeout_s=1.0), audit, clock=clock
    )
    denied = gate.decide(run(tmp_path))
    assert isinstance(denied, Denied)
    assert denied.rule == "/state"
    assert "unreachable" in denied.reason
    # A call that needs no state does not depend on the store.
    assert isinstance(gate.decide(run(tmp_path, tool="run_python_code")), Allowed)
    assert [r.rule for r in read_audit(tmp_path / "audit.jsonl")] == [
        "/state",
        "/tools/run_python_code",
    ]


def test_closed_sqlite_store_denies_with_state_rule(
    make_gate: GateFactory, sqlite_store: SqliteCounterStore, tmp_path: Path
) -> None:
    gate = make_gate("tools: {run_code: {limits: [{counter: r, window: minute, max: 5}]}}")
    sqlite_store.close()
    assert rule_of(gate, run(tmp_path)) == "/state"


def test_unwritable_audit_denies_and_frees_the_counter(
    make_gate: GateFactory,
    audit: AuditLog,
    sqlite_store: SqliteCounterStore,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    gate = make_gate("tools: {run_code: {limits: [{counter: r, window: minute, max: 1}]}}")
    audit.close()
    assert rule_of(gate, run(tmp_path)) == "/audit"
    assert sqlite_store.used(CounterSpec("r|grant=local", 60, 1), clock())[0] == 0


def test_the_plan_says_whether_a_session_keeps_its_interpreter(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    """A tool's own `state`, `all_tools.state` and its engine profile's `state` decide, in
    that order; when the policy says nothing, the tool's default (from the call) stands."""
    gate = make_gate("""
        engines:
          kept: {kind: wasm, state: persistent}
        all_tools: {state: fresh}
        tools:
          run_code: {}
          run_python_code: {state: persistent}
          pyodide_execute: {engine: kept}
    """)

    def state_of(tool: str, default: str = "fresh") -> str:
        call = dataclasses.replace(run(tmp_path, tool=tool), default_state=default)
        decision = gate.decide(call)
        assert isinstance(decision, Allowed) and decision.plan is not None
        return decision.plan.state

    assert state_of("run_code", default="persistent") == "fresh"  # all_tools says fresh
    assert state_of("run_python_code") == "persistent"  # the tool's own rule beats all_tools
    assert state_of("pyodide_execute") == "fresh"  # all_tools comes before the profile
    silent = make_gate("""
        engines:
          kept: {kind: wasm, state: persistent}
        tools:
          run_code: {}
          run_python_code: {engine: kept}
    """)
    call = dataclasses.replace(run(tmp_path), default_state="persistent")
    decided = silent.decide(call)
    assert isinstance(decided, Allowed) and decided.plan is not None
    assert decided.plan.state == "persistent"  # the tool's own default
    routed = silent.decide(run(tmp_path, tool="run_python_code"))
    assert isinstance(routed, Allowed) and routed.plan is not None
    assert routed.plan.state == "persistent"  # the profile's


def test_state_must_be_fresh_or_persistent() -> None:
    with pytest.raises(PolicyLoadError) as refused:
        load_policy_text('version: "1"\ntools:\n  run_code: {state: sticky}\n')
    said = str(refused.value)
    assert "tools.run_code.state" in said and "'fresh' or 'persistent'" in said
    assert "'sticky'" in said
