"""What tools/list shows each grant: the tools it may call, per shipped policy and per grant."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import Gate, load_policy
from runner.tools import TOOLS

from .conftest import GateFactory

POLICIES = Path(__file__).resolve().parents[2] / "policies"
ALL = [spec.name for spec in TOOLS]
CODE_RUNNER = {"run_python_code", "save_to_file_and_run", "run_python_file"}
PYODIDE_FILES = {
    "pyodide_get-mount-points",
    "pyodide_list-mounted-directory",
    "pyodide_read-image",
}
INSTALLS = {"pip_install_package", "pyodide_install-packages"}


def shipped(name: str, make_gate: GateFactory) -> Gate:
    return make_gate((POLICIES / name).read_text())


def test_eval_harness_lists_only_its_two_allowed_tools(make_gate: GateFactory) -> None:
    assert set(shipped("eval-harness.yaml", make_gate).listed_tools(ALL, "local")) == {
        "run_code",
        "run_python_code",
    }


def test_no_install_policy_lists_neither_installs_nor_the_pyodide_file_tools(
    make_gate: GateFactory,
) -> None:
    listed = set(shipped("python-no-net-no-install.yaml", make_gate).listed_tools(ALL, "local"))
    assert listed == CODE_RUNNER | {"run_code", "pyodide_execute"}


def test_the_default_policy_lists_every_tool_it_names(make_gate: GateFactory) -> None:
    gate = shipped("default.yaml", make_gate)
    named = set(load_policy(POLICIES / "default.yaml").tools)
    assert set(gate.listed_tools(ALL, "local")) == named & set(ALL)


def test_list_denied_tools_lists_the_denied_but_never_the_hidden(make_gate: GateFactory) -> None:
    gate = make_gate(
        """
default: deny
server: {list_denied_tools: true}
tools:
  run_code: {}
  run_python_code: {action: deny}
  pip_install_package: {action: hide}
"""
    )
    listed = set(gate.listed_tools(ALL, "local"))
    assert {"run_code", "run_python_code", "pyodide_execute"} <= listed
    assert "pip_install_package" not in listed


GRANTS = f"""
default: deny
grants:
  alice: {{token_sha256: "{"a" * 64}", roles: [admin]}}
  bob: {{token_sha256: "{"b" * 64}"}}
tools:
  run_code: {{}}
  run_python_code:
    require: [{{path: roles, op: contains, value: admin}}]
  pyodide_execute:
    deny_if: [{{path: grant, op: eq, value: bob}}]
  save_to_file_and_run:
    approve_if: [{{path: grant, op: eq, value: bob}}]
  run_python_file:
    deny_if: [{{path: args.code, op: contains, value: "import os"}}]
"""


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        ("alice", {"run_code", "run_python_code", "pyodide_execute"}),
        ("bob", {"run_code"}),
    ],
)
def test_each_grant_sees_what_its_grant_and_roles_may_call(
    make_gate: GateFactory, grant: str, expected: set[str]
) -> None:
    listed = set(make_gate(GRANTS).listed_tools(ALL, grant))
    # approve_if and argument checks do not hide a tool: only a refusal of every call does
    assert listed == expected | {"save_to_file_and_run", "run_python_file"}


def test_audit_mode_lists_what_it_would_deny(make_gate: GateFactory) -> None:
    gate = make_gate("default: deny\nmode: audit\ntools: {run_code: {}}\n")
    assert set(gate.listed_tools(ALL, "local")) == set(ALL)
