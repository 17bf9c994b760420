"""Quotas by grant role (`roles: {NAME: {quotas}}`): on top of the tool's and its profile's,
several roles in the grant's order (the later wins), egress routes of their own, caller limits
clamped to the result, warnings, the compiled cache, and what `explain` says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policies import (
    Allowed,
    Denied,
    PolicyLoadError,
    ToolCall,
    explain_egress,
    load_policy_text,
    policy_json_schema,
)
from policies._compile import compile_policy
from runner.cli import main
from runner.operator import explain_call
from sandboxes import Program, WorkspacePaths

from .conftest import GateFactory

MIB = 1024 * 1024
ALICE, BOB, CAROL = "a" * 64, "b" * 64, "c" * 64

POLICY = f"""
version: '1'
default: deny
grants:
  alice: {{token_sha256: "{ALICE}", roles: [analyst]}}
  bob: {{token_sha256: "{BOB}", roles: [viewer]}}
  carol: {{token_sha256: "{CAROL}", roles: [analyst, heavy]}}
engines:
  big: {{kind: wasm, quotas: {{memory_mb: 768, timeout_s: 20}}}}
quotas: {{timeout_s: 5}}
roles:
  analyst:
    quotas:
      timeout_s: 60
      max_code_bytes: 100
      network: {{allow: ["api.test:443"], max_connections_per_call: 2}}
  heavy:
    quotas: {{timeout_s: 120, memory_mb: 2048, network: none}}
tools:
  run_code: {{engine: big, quotas: {{timeout_s: 10}}}}
  run_python_code: {{}}
"""


def call(tmp_path: Path, grant: str, code: str = "print(1)", **extra: Any) -> ToolCall:
    return ToolCall(
        "run_code",
        {"code": code},
        grant=grant,
        program=Program("code", code),
        workspace=WorkspacePaths(tmp_path / "files", tmp_path / "site"),
        **extra,
    )


def allowed(gate_decision: object) -> Allowed:
    assert isinstance(gate_decision, Allowed), gate_decision
    return gate_decision


def test_a_roles_quotas_win_over_the_tools_and_its_profiles(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate(POLICY)

    alice = allowed(gate.decide(call(tmp_path, "alice")))
    bob = allowed(gate.decide(call(tmp_path, "bob")))

    assert alice.plan is not None and bob.plan is not None
    assert (alice.plan.limits.wall_timeout_s, alice.plan.limits.network) == (60.0, "egress")
    assert alice.plan.limits.memory_bytes == 768 * MIB  # unset by the role: the profile's
    assert (bob.plan.limits.wall_timeout_s, bob.plan.limits.network) == (10.0, "none")
    assert alice.egress is not None and bob.egress is None
    assert alice.egress.route.rule == "/roles/analyst/quotas/network"
    assert alice.egress.max_connections == 2
    assert alice.egress.decide("api.test", 443, None).allowed
    assert not alice.egress.decide("other.test", 443, None).allowed


def test_several_roles_apply_in_the_grants_order_the_later_winning(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    carol = allowed(make_gate(POLICY).decide(call(tmp_path, "carol")))
    assert carol.plan is not None
    limits = carol.plan.limits
    assert (limits.wall_timeout_s, limits.memory_bytes, limits.network) == (
        120.0,
        2048 * MIB,
        "none",  # heavy's `none` replaces analyst's route: network is never merged
    )
    assert carol.egress is None

    reordered = POLICY.replace("roles: [analyst, heavy]", "roles: [heavy, analyst]")
    again = allowed(make_gate(reordered).decide(call(tmp_path, "carol")))
    assert again.plan is not None
    assert (again.plan.limits.wall_timeout_s, again.plan.limits.network) == (60.0, "egress")
    assert again.plan.limits.memory_bytes == 2048 * MIB  # set by heavy only


def test_caller_limits_are_clamped_to_the_roles_ceiling(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate(POLICY)
    asked = call(tmp_path, "alice", requested_timeout_s=90.0, requested_memory_bytes=4096 * MIB)

    alice = allowed(gate.decide(asked))
    lower = allowed(gate.decide(call(tmp_path, "alice", requested_timeout_s=30.0)))

    assert alice.plan is not None and lower.plan is not None
    assert (alice.plan.limits.wall_timeout_s, alice.plan.limits.memory_bytes) == (60.0, 768 * MIB)
    assert lower.plan.limits.wall_timeout_s == 30.0


def test_a_roles_code_size_ceiling_refuses_with_its_rule(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate(POLICY)
    code = "x = 1\n" * 30

    refused = gate.decide(call(tmp_path, "alice", code))

    assert isinstance(refused, Denied)
    assert refused.rule == "/roles/analyst/quotas/max_code_bytes"
    assert isinstance(gate.decide(call(tmp_path, "bob", code)), Allowed)


def test_a_role_can_take_the_network_away(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate(f"""
grants:
  dan: {{token_sha256: "{ALICE}", roles: [offline]}}
  eve: {{token_sha256: "{BOB}"}}
roles:
  offline: {{quotas: {{network: none}}}}
tools:
  run_code: {{quotas: {{network: {{allow: ["api.test"]}}}}}}
""")
    dan = allowed(gate.decide(call(tmp_path, "dan")))
    eve = allowed(gate.decide(call(tmp_path, "eve")))

    assert dan.plan is not None and dan.plan.limits.network == "none" and dan.egress is None
    assert eve.egress is not None and eve.egress.route.rule == "/tools/run_code/quotas/network"


def test_terms_and_listed_hosts_follow_the_grant(make_gate: GateFactory) -> None:
    gate = make_gate(POLICY)

    assert gate.terms("run_code", "alice")[0].wall_timeout_s == 60.0
    assert gate.terms("run_code", "bob")[0].wall_timeout_s == 10.0
    assert gate.terms("run_code")[0].wall_timeout_s == 10.0
    assert gate.egress_allow("run_code", "alice") == ("api.test:443",)
    assert gate.egress_allow("run_code", "bob") == ()
    assert gate.terms("run_python_code", "alice")[0].wall_timeout_s == 60.0  # every tool


def test_each_tool_and_roles_pair_is_compiled_once() -> None:
    compiled = compile_policy(load_policy_text(POLICY))

    first = compiled.tool("run_code", ("analyst",))

    assert compiled.tool("run_code", ("analyst",)) is first
    assert compiled.tool("run_code", ("viewer",)) is compiled.tools["run_code"]
    assert compiled.tool("run_code", ("viewer", "analyst")) is first  # roles without quotas
    assert compiled.tool("shell", ("analyst",)) is compiled.tool("other", ("analyst",))
    assert compiled.tool("shell", ("analyst",)).listed is False
    assert first.quotas.sources["timeout_s"] == "/roles/analyst/quotas/timeout_s"
    assert first.quotas.sources["memory_mb"] == "/engines/big/quotas/memory_mb"


def test_a_role_no_grant_holds_is_a_warning_not_an_error() -> None:
    ghost = "  ghost: {quotas: {timeout_s: 1}}\n  heavy:"
    policy = load_policy_text(POLICY.replace("  heavy:", ghost))

    (warning,) = [w for w in policy.warnings if w.path.startswith("roles")]
    assert warning.path == "roles.ghost"
    assert "no grant holds role 'ghost'" in warning.message
    # bob's `viewer` has no quotas: a role for predicates only, nothing to warn about
    assert not [w for w in policy.warnings if "viewer" in w.message]


def test_conflicting_roles_are_warned_with_the_winner() -> None:
    warnings = load_policy_text(POLICY).warnings

    fields = sorted(w.message.split("quotas.")[1].split(" ")[0] for w in warnings)
    assert fields == ["network", "timeout_s"]  # memory_mb is set by one role only
    assert all("the one listed last, 'heavy', wins" in w.message for w in warnings)


def test_a_roles_route_naming_an_unknown_secret_is_refused() -> None:
    text = POLICY.replace("max_connections_per_call: 2", "secrets: [nope]")
    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text(text)
    (problem,) = raised.value.problems
    assert problem.path == "roles.analyst.quotas.network.secrets[0]"


def test_a_role_is_a_key_of_the_schema() -> None:
    schema = policy_json_schema()
    assert "roles" in schema["properties"]
    assert set(schema["$defs"]["Role"]["properties"]) == {"quotas"}


def test_explain_egress_follows_the_grants_roles() -> None:
    policy = load_policy_text(POLICY)

    alice = dict(explain_egress(policy, "run_code", "api.test", grant="alice"))
    bob = dict(explain_egress(policy, "run_code", "api.test", grant="bob"))

    assert alice["grant"] == "alice (roles: analyst)"
    assert (alice["decision"], alice["rule"]) == ("allow", "/roles/analyst/quotas/network/allow/0")
    assert (bob["decision"], bob["rule"]) == ("deny", "/quotas/network")


def test_explain_call_shows_the_roles_limits() -> None:
    policy = load_policy_text(POLICY)

    carol = explain_call(policy, tool="run_code", args={"code": "1"}, grant="carol")
    bob = explain_call(policy, tool="run_code", args={"code": "1"}, grant="bob")

    assert carol.roles == ("analyst", "heavy") and bob.roles == ()
    assert carol.limits is not None and bob.limits is not None
    assert (carol.limits["wall_timeout_s"], bob.limits["wall_timeout_s"]) == (120.0, 10.0)


def test_the_explain_command_takes_the_grant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)

    assert main(["policy", "explain", str(path), "--egress", "api.test", "--grant", "alice"]) == 0
    allowed_text = capsys.readouterr().out
    assert main(["policy", "explain", str(path), "--egress", "api.test", "--grant", "bob"]) == 0
    refused_text = capsys.readouterr().out
    on_carol = ["--tool", "run_code", "--args", '{"code": "1"}', "--grant", "carol"]
    assert main(["policy", "explain", str(path), *on_carol]) == 0
    call_text = capsys.readouterr().out

    assert "decision: allow" in allowed_text and "/roles/analyst/quotas/network" in allowed_text
    assert "decision: deny" in refused_text
    assert "roles:    analyst, heavy" in call_text
    assert "wall_timeout_s=120.0" in call_text
