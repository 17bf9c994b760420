"""Approvals: bound to the exact call, answered in any process, used once, expiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import (
    Allowed,
    Denied,
    NeedsApproval,
    SqliteCounterStore,
    ToolCall,
    UnknownApproval,
    read_audit,
)
from tests.clock import FakeClock

from .conftest import GateFactory

POLICY = """
approvals: {timeout_s: 60}
tools:
  pip_install_package: {action: require_approval, reason: installs are reviewed}
  run_python_code:
    approve_if: [{path: args.code, op: contains, value: subprocess}]
    require: [{path: args.code, op: exists}]
"""
INSTALL = ToolCall("pip_install_package", {"package_name": "numpy"}, grant="alice", session="s1")


def test_needs_approval_then_allowed_exactly_once(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate(POLICY)
    asked = gate.decide(INSTALL)
    assert isinstance(asked, NeedsApproval)
    assert asked.rule == "/tools/pip_install_package/action"
    assert asked.approval_id in asked.reason
    assert gate.approval_status(asked.approval_id) == "pending"
    again = gate.decide(INSTALL)  # still pending: the same request, not a new one
    assert isinstance(again, NeedsApproval) and again.approval_id == asked.approval_id

    gate.resolve_approval(asked.approval_id, True, by="carol")
    assert gate.approval_status(asked.approval_id) == "approved"
    allowed = gate.decide(INSTALL)
    assert isinstance(allowed, Allowed) and allowed.approval_id == asked.approval_id
    assert gate.approval_status(asked.approval_id) == "used"
    fresh = gate.decide(INSTALL)
    assert isinstance(fresh, NeedsApproval) and fresh.approval_id != asked.approval_id

    events = [(r.event, r.decision, r.approval_id) for r in read_audit(tmp_path / "audit.jsonl")]
    assert ("approval", "allow", asked.approval_id) in events
    assert ("decision", "allow", asked.approval_id) in events


def test_approval_is_bound_to_args_grant_and_session(make_gate: GateFactory) -> None:
    gate = make_gate(POLICY)
    asked = gate.decide(INSTALL)
    assert isinstance(asked, NeedsApproval)
    gate.resolve_approval(asked.approval_id, True)
    for other in (
        ToolCall(INSTALL.tool, {"package_name": "requests"}, grant="alice", session="s1"),
        ToolCall(INSTALL.tool, INSTALL.args, grant="mallory", session="s1"),
        ToolCall(INSTALL.tool, INSTALL.args, grant="alice", session="s2"),
    ):
        decision = gate.decide(other)
        assert isinstance(decision, NeedsApproval)
        assert decision.approval_id != asked.approval_id
    assert gate.approval_status(asked.approval_id) == "approved"  # still unused


def test_denied_approval_denies_the_identical_call(make_gate: GateFactory) -> None:
    gate = make_gate(POLICY)
    asked = gate.decide(INSTALL)
    assert isinstance(asked, NeedsApproval)
    gate.resolve_approval(asked.approval_id, False, by="carol")
    denied = gate.decide(INSTALL)
    assert isinstance(denied, Denied)
    assert denied.rule == "/tools/pip_install_package/action"
    assert "carol" in denied.reason


def test_approve_if_asks_only_when_it_matches(make_gate: GateFactory) -> None:
    gate = make_gate(POLICY)
    assert isinstance(gate.decide(ToolCall("run_python_code", {"code": "print(1)"})), Allowed)
    asked = gate.decide(ToolCall("run_python_code", {"code": "import subprocess"}))
    assert isinstance(asked, NeedsApproval)
    assert asked.rule == "/tools/run_python_code/approve_if/0"


def test_approvals_expire(make_gate: GateFactory, clock: FakeClock) -> None:
    gate = make_gate(POLICY)
    asked = gate.decide(INSTALL)
    assert isinstance(asked, NeedsApproval)
    clock.advance(61)
    assert gate.approval_status(asked.approval_id) == "expired"
    with pytest.raises(UnknownApproval) as raised:
        gate.resolve_approval(asked.approval_id, True)
    assert raised.value.status == "expired"
    renewed = gate.decide(INSTALL)
    assert isinstance(renewed, NeedsApproval) and renewed.approval_id != asked.approval_id


def test_approved_but_unused_expires_after_the_timeout(
    make_gate: GateFactory, clock: FakeClock
) -> None:
    gate = make_gate(POLICY)
    asked = gate.decide(INSTALL)
    assert isinstance(asked, NeedsApproval)
    clock.advance(50)
    gate.resolve_approval(asked.approval_id, True)
    clock.advance(59)  # the timeout restarts at the answer
    assert gate.approval_status(asked.approval_id) == "approved"
    clock.advance(2)
    assert gate.approval_status(asked.approval_id) == "expired"
    assert isinstance(gate.decide(INSTALL), NeedsApproval)


def test_unknown_approval_id(make_gate: GateFactory) -> None:
    gate = make_gate(POLICY)
    with pytest.raises(UnknownApproval) as raised:
        gate.approval_status("nope")
    assert (raised.value.approval_id, raised.value.status) == ("nope", None)
    with pytest.raises(UnknownApproval):
        gate.resolve_approval("nope", True)


def test_another_process_can_answer(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate(POLICY)
    asked = gate.decide(INSTALL)
    assert isinstance(asked, NeedsApproval)
    elsewhere = SqliteCounterStore(tmp_path / "state.sqlite3")  # what `sandgate approve` opens
    try:
        elsewhere.resolve_approval(asked.approval_id, True, "ops", 1_700_000_000.0)
    finally:
        elsewhere.close()
    assert isinstance(gate.decide(INSTALL), Allowed)


def test_approved_call_still_needs_room_in_its_counters(make_gate: GateFactory) -> None:
    gate = make_gate(
        "tools: {pip_install_package: {action: require_approval, limits: "
        "[{counter: i, window: minute, max: 0}]}}"
    )
    asked = gate.decide(INSTALL)
    assert isinstance(asked, NeedsApproval)
    gate.resolve_approval(asked.approval_id, True)
    denied = gate.decide(INSTALL)
    assert isinstance(denied, Denied) and denied.rule == "/tools/pip_install_package/limits/i"
    assert gate.approval_status(asked.approval_id) == "approved"  # not spent on a refusal


def test_audit_mode_never_blocks_on_approvals(make_gate: GateFactory) -> None:
    gate = make_gate("mode: audit\n" + POLICY)
    decision = gate.decide(INSTALL)
    assert isinstance(decision, Allowed)
    assert decision.rule == "/tools/pip_install_package/action"
