"""Approvals: bound to the exact call, answered only by whom the policy names, in any process,
used once, expiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import (
    Allowed,
    ApprovalRefused,
    Denied,
    Gate,
    NeedsApproval,
    PolicyLoadError,
    SqliteCounterStore,
    ToolCall,
    UnknownApproval,
    load_policy_text,
    policy_json_schema,
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
    with pytest.raises(UnknownApproval) as answered:
        gate.resolve_approval("nope", True)
    assert (answered.value.approval_id, answered.value.status) == ("nope", None)


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


# -- who may answer: `approvals.by` -----------------------------------------------------------

BY_CLIENT = POLICY.replace("approvals: {timeout_s: 60}", "approvals: {timeout_s: 60, by: client}")
BOB_INSTALL = ToolCall(INSTALL.tool, INSTALL.args, grant="bob", session="s1")


def _asked(gate: Gate, call: ToolCall = INSTALL) -> str:
    decision = gate.decide(call)
    assert isinstance(decision, NeedsApproval)
    return decision.approval_id


def _refusals(tmp_path: Path) -> list[tuple[str | None, str | None, str | None, str | None]]:
    return [
        (r.rule, r.grant, r.approval_id, r.by)
        for r in read_audit(tmp_path / "audit.jsonl")
        if r.event == "decision" and r.decision == "deny"
    ]


def test_operators_answer_by_default_and_the_schema_says_so() -> None:
    assert load_policy_text("tools: {}").approvals.by == "operator"
    field = policy_json_schema()["$defs"]["ApprovalSettings"]["properties"]["by"]
    assert (field["default"], sorted(field["enum"])) == ("operator", ["client", "operator"])
    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text("approvals: {by: anyone}")
    assert [p.path for p in raised.value.problems] == ["approvals.by"]


def test_the_request_says_who_may_answer(make_gate: GateFactory) -> None:
    by_operator = make_gate(POLICY).decide(INSTALL)
    assert isinstance(by_operator, NeedsApproval) and by_operator.by == "operator"
    by_client = make_gate(BY_CLIENT).decide(ToolCall(INSTALL.tool, INSTALL.args, session="s9"))
    assert isinstance(by_client, NeedsApproval) and by_client.by == "client"


def test_under_by_operator_a_client_answer_is_never_an_approval(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate(POLICY)
    approval = _asked(gate)
    with pytest.raises(ApprovalRefused) as raised:
        gate.answer_approval(INSTALL, approval, True, elicitation=True)
    refused = raised.value
    assert (refused.problem, refused.rule, refused.approval_id, refused.by) == (
        "operator_only",
        "/approvals/by",
        approval,
        "client:alice",
    )
    assert gate.approval_status(approval) == "pending"
    assert isinstance(gate.decide(INSTALL), NeedsApproval)
    assert _refusals(tmp_path) == [("/approvals/by", "alice", approval, "client:alice")]


def test_a_client_without_elicitation_cannot_answer(make_gate: GateFactory) -> None:
    gate = make_gate(BY_CLIENT)
    approval = _asked(gate)
    with pytest.raises(ApprovalRefused) as raised:
        gate.answer_approval(INSTALL, approval, True, elicitation=False)
    assert (raised.value.problem, raised.value.rule) == ("no_elicitation", "/approvals/by")
    assert gate.approval_status(approval) == "pending"


def test_another_grant_cannot_answer_an_approval_and_learns_nothing_of_it(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate(BY_CLIENT)
    alices = _asked(gate)
    for approved in (True, False):
        with pytest.raises(ApprovalRefused) as raised:
            gate.answer_approval(BOB_INSTALL, alices, approved, elicitation=True)
        refused = raised.value
        assert (refused.problem, refused.rule, refused.by) == (
            "not_found",
            "/approvals",
            "client:bob",
        )
        assert "alice" not in str(refused)  # the same answer as for an id that never existed
    with pytest.raises(ApprovalRefused) as unknown:
        gate.answer_approval(BOB_INSTALL, "0123456789ab", True, elicitation=True)
    assert unknown.value.problem == "not_found"
    assert str(unknown.value).replace("0123456789ab", alices) == str(raised.value)
    assert gate.approval_status(alices) == "pending"
    assert isinstance(gate.decide(INSTALL), NeedsApproval)  # alice's call did not run
    assert isinstance(gate.decide(BOB_INSTALL), NeedsApproval)  # nor bob's
    assert ("/approvals", "bob", alices, "client:bob") in _refusals(tmp_path)


@pytest.mark.parametrize(
    ("other", "differs"),
    [
        (ToolCall(INSTALL.tool, {"package_name": "requests"}, "alice", "s1"), ("arguments",)),
        (ToolCall(INSTALL.tool, INSTALL.args, "alice", "s2"), ("session",)),
        (
            ToolCall("run_python_code", {"code": "import subprocess"}, "alice", "s1"),
            ("tool", "arguments"),
        ),
    ],
)
def test_an_approval_answers_only_the_call_it_was_asked_for(
    make_gate: GateFactory, other: ToolCall, differs: tuple[str, ...]
) -> None:
    gate = make_gate(BY_CLIENT)
    approval = _asked(gate)
    with pytest.raises(ApprovalRefused) as raised:
        gate.answer_approval(other, approval, True, elicitation=True)
    assert (raised.value.problem, raised.value.differs) == ("other_call", differs)
    assert gate.approval_status(approval) == "pending"


def test_the_human_at_the_client_approves_its_own_call_once(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate(BY_CLIENT)
    approval = _asked(gate)
    record = gate.answer_approval(INSTALL, approval, True, elicitation=True)
    assert (record.approval_id, record.status, record.resolved_by) == (
        approval,
        "approved",
        "client:alice",
    )
    allowed = gate.decide(INSTALL)
    assert isinstance(allowed, Allowed) and allowed.approval_id == approval
    with pytest.raises(ApprovalRefused) as again:
        gate.answer_approval(INSTALL, approval, True, elicitation=True)
    assert (again.value.problem, again.value.status) == ("answered", "used")
    answers = [
        (r.decision, r.by) for r in read_audit(tmp_path / "audit.jsonl") if r.event == "approval"
    ]
    assert answers == [("allow", "client:alice")]


def test_a_client_denial_refuses_the_call_and_cannot_be_taken_back(
    make_gate: GateFactory,
) -> None:
    gate = make_gate(BY_CLIENT)
    approval = _asked(gate)
    gate.answer_approval(INSTALL, approval, False, elicitation=True)
    with pytest.raises(ApprovalRefused) as raised:
        gate.answer_approval(INSTALL, approval, True, elicitation=True)
    assert (raised.value.problem, raised.value.status) == ("answered", "denied")
    denied = gate.decide(INSTALL)
    assert isinstance(denied, Denied) and "client:alice" in denied.reason


def test_an_operator_answers_under_either_setting_and_is_audited_as_operator(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    for policy, call in ((POLICY, INSTALL), (BY_CLIENT, BOB_INSTALL)):
        gate = make_gate(policy)
        approval = _asked(gate, call)
        gate.resolve_approval(approval, True, by="carol")
        assert isinstance(gate.decide(call), Allowed)
    answers = [
        (r.grant, r.by) for r in read_audit(tmp_path / "audit.jsonl") if r.event == "approval"
    ]
    assert answers == [("alice", "operator:carol"), ("bob", "operator:carol")]
