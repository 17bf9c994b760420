"""`engines.<profile>.require`: which boundary layers an engine must have, validated against
the engine's own layer names; by default every one."""

from __future__ import annotations

import pytest

from policies import PolicyLoadError, engine_requirements, load_policy_text
from sandboxes import layer_names


def _problem_of(text: str) -> tuple[str, str]:
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_text(text)
    [problem] = caught.value.problems
    return problem.path, problem.message


def test_an_unknown_layer_is_an_error_naming_the_key_the_expected_and_the_given() -> None:
    path, message = _problem_of(
        "engines:\n  lax:\n    kind: pyodide\n    require: [deno_permissions, unshare]\n"
    )
    assert path == "engines.lax.require"
    assert "['unshare']" in message
    assert all(name in message for name in layer_names("pyodide"))


def test_layer_names_are_those_of_the_profiles_own_engine() -> None:
    # `seccomp` is a container layer, not a Pyodide one.
    path, message = _problem_of("engines:\n  lax:\n    kind: pyodide\n    require: [seccomp]\n")
    assert path == "engines.lax.require" and "['seccomp']" in message
    policy = load_policy_text(
        "engines:\n  g:\n    kind: container\n    runtime: runsc\n    require: [seccomp]\n"
    )
    assert policy.engines["g"].require == ["seccomp"]
    assert policy.engines["g"].engine_key == "container:runsc"


def test_without_require_the_routed_engines_need_every_layer() -> None:
    policy = load_policy_text("tools:\n  run_code: {engine: pyodide}\n")
    assert engine_requirements(policy) == {
        "pyodide": frozenset(layer_names("pyodide")),
        "wasm": frozenset(layer_names("wasm")),
    }


def test_a_profile_lists_the_layers_it_accepts_to_run_without() -> None:
    policy = load_policy_text(
        "tools:\n  run_code: {engine: lax}\n"
        "engines:\n  lax:\n    kind: pyodide\n    require: [deno_permissions, js_realm]\n"
    )
    required = engine_requirements(policy)
    assert required["pyodide"] == frozenset({"deno_permissions", "js_realm"})
    assert "container:runc" not in required


def test_two_profiles_of_one_engine_require_the_union() -> None:
    policy = load_policy_text(
        "tools:\n  run_code: {engine: lax}\n  pyodide_execute: {engine: pyodide}\n"
        "engines:\n  lax:\n    kind: pyodide\n    require: []\n"
    )
    assert engine_requirements(policy)["pyodide"] == frozenset(layer_names("pyodide"))
    assert engine_requirements(policy, ["lax"]) == {"pyodide": frozenset()}


def test_the_builtin_gvisor_profile_requires_every_runsc_layer() -> None:
    policy = load_policy_text("all_tools: {engine: gvisor}\n")
    assert engine_requirements(policy)["container:runsc"] == frozenset(
        layer_names("container:runsc")
    )
