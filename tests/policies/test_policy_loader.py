"""Loading policies: the PolicyLayer format unchanged, the superset, and errors that say where."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from policies import Policy, PolicyLoadError, Problem, load_policy, load_policy_text

SEED = (
    '{"version":"1","default":"deny","tools":{"pip_install_package":{"limits":[{"counter":'
    '"pip_install_package_rate","window":"minute","max":10,"scope":"grant"}]}}}'
)


def problems_of(text: str, **kwargs: object) -> list[Problem]:
    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text(text, **kwargs)  # type: ignore[arg-type]
    return raised.value.problems


def test_policylayer_seed_loads_with_its_meaning() -> None:
    policy = load_policy_text(SEED)
    assert (policy.version, policy.default, policy.mode) == ("1", "deny", "enforce")
    rule = policy.tools["pip_install_package"]
    assert rule.action == "allow"
    (limit,) = rule.limits
    assert (limit.counter, limit.window_s, limit.max, limit.scope, limit.increment) == (
        "pip_install_package_rate",
        60.0,
        10,
        "grant",
        1,
    )
    assert policy.warnings == ()


def test_secure_defaults_for_an_empty_policy() -> None:
    policy = load_policy_text("version: '1'\n")
    assert (policy.default, policy.mode, policy.hide, policy.tools) == ("deny", "enforce", [], {})
    assert (policy.state.backend, policy.audit.fsync, policy.approvals.timeout_s) == (
        "sqlite",
        False,
        300.0,
    )


def test_unknown_key_names_the_path_position_and_a_fix() -> None:
    text = (
        "version: '1'\n"
        "tools:\n"
        "  pip_install_package:\n"
        "    limits:\n"
        "      - counter: x\n"
        "        window: minute\n"
        "        windw: hour\n"
        "        max: 3\n"
    )
    (problem,) = problems_of(text)
    assert problem.path == "tools.pip_install_package.limits[0].windw"
    assert (problem.line, problem.column) == (7, 9)
    assert "window" in problem.message  # the suggestion


def test_json_errors_have_positions_too() -> None:
    text = '{\n\t"version": "1",\n\t"defalt": "deny"\n}\n'
    (problem,) = problems_of(text)
    assert (problem.path, problem.line, problem.column) == ("defalt", 3, 2)


def test_wrong_types_and_values_are_each_reported() -> None:
    text = (
        "tools:\n"
        "  run_code:\n"
        "    action: alow\n"
        "    quotas: {timeout_s: 0, memory_mb: '512'}\n"
        "    limits: [{counter: c, window: PT0S, max: -1}]\n"
    )
    found = {p.path: p for p in problems_of(text)}
    assert set(found) == {
        "tools.run_code.action",
        "tools.run_code.quotas.timeout_s",
        "tools.run_code.quotas.memory_mb",
        "tools.run_code.limits[0].window",
        "tools.run_code.limits[0].max",
    }
    assert found["tools.run_code.action"].line == 3
    assert "alow" in found["tools.run_code.action"].message


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        ("minute", 60),
        ("hour", 3600),
        ("day", 86400),
        ("PT30S", 30),
        ("P1D", 86400),
        ("PT1H30M", 5400),
        ("P1W", 604800),
        ("PT0.5S", 0.5),
    ],
)
def test_windows(window: str, seconds: float) -> None:
    policy = load_policy_text(f"limits: [{{counter: c, window: {window}, max: 1}}]")
    assert policy.limits[0].window_s == seconds


@pytest.mark.parametrize("window", ["P1M", "P1Y", "PT", "P", "1 minute", "week", "PT-5S"])
def test_bad_windows(window: str) -> None:
    (problem,) = problems_of(f"limits: [{{counter: c, window: '{window}', max: 1}}]")
    assert problem.path == "limits[0].window"


def test_yaml_off_and_no_stay_strings() -> None:
    assert load_policy_text("mode: off\n").mode == "off"
    assert load_policy_text("version: 1\n").version == "1"


def test_duplicate_keys_are_refused() -> None:
    (problem,) = problems_of("default: allow\ndefault: deny\n")
    assert (problem.path, problem.line) == ("default", 2)


def test_syntax_errors_have_positions() -> None:
    (yaml_problem,) = problems_of("tools:\n  run_code: [\n")
    assert yaml_problem.line is not None
    (json_problem,) = problems_of('{"version": "1",}', source="p.json")
    assert (json_problem.line, json_problem.column) == (1, 17)


def test_not_a_mapping() -> None:
    (problem,) = problems_of("- just\n- a list\n")
    assert problem.path == ""


@pytest.mark.parametrize(
    ("snippet", "path"),
    [
        ("tools: {run_code: {engine: nowhere}}", "tools.run_code.engine"),
        ("all_tools: {engine: nowhere}", "all_tools.engine"),
        ("engines: {w: {kind: wasm, runtime: runsc}}", "engines.w.runtime"),
        ("tools: {run_code: {args_schema: {type: 7}}}", "tools.run_code.args_schema"),
        ("state: {backend: redis}", "state.backend"),
        (
            "tools: {run_code: {deny_if: [{path: code, op: exists}]}}",
            "tools.run_code.deny_if[0].path",
        ),
        (
            "tools: {run_code: {deny_if: [{path: args.x, op: in, value: 3}]}}",
            "tools.run_code.deny_if[0]",
        ),
        (
            "tools: {run_code: {deny_if: [{path: args.x, op: regex, value: '('}]}}",
            "tools.run_code.deny_if[0]",
        ),
        (
            "tools: {run_code: {deny_if: [{path: args.x, op: lt, value: 'a'}]}}",
            "tools.run_code.deny_if[0]",
        ),
        (
            "limits: [{counter: c, window: minute, max: 1, increment_from: x}]",
            "limits[0].increment_from",
        ),
        ("grants: {alice: {token_sha256: nothex}}", "grants.alice.token_sha256"),
    ],
)
def test_semantic_problems_name_their_key(snippet: str, path: str) -> None:
    problems = problems_of(snippet)
    assert [p.path for p in problems] == [path]
    assert problems[0].line == 1


def test_engine_profiles_resolve(tmp_path: Path) -> None:
    policy = load_policy_text(
        "engines: {sealed: {kind: container, runtime: runsc}}\n"
        "tools: {run_code: {engine: sealed}, run_python_code: "
        "{engine: gvisor}}"
    )
    assert policy.profile("sealed")[:2] == ("container", "runsc")
    assert policy.profile("gvisor")[:2] == ("container", "runsc")
    assert policy.profile("container")[:2] == ("container", "runc")


def test_grants_file_is_relative_to_the_policy(tmp_path: Path) -> None:
    digest = "ab" * 32
    (tmp_path / "grants.yaml").write_text(f"ci: {{token_sha256: {digest}, roles: [eval]}}\n")
    (tmp_path / "policy.yaml").write_text(
        "grants_file: grants.yaml\nstate: {path: state/db.sqlite3}\naudit: {path: a.jsonl}\n"
    )
    policy = load_policy(tmp_path / "policy.yaml")
    assert policy.grants["ci"].roles == ["eval"]
    assert policy.state.path == str(tmp_path / "state" / "db.sqlite3")
    assert policy.audit.path == str(tmp_path / "a.jsonl")
    assert policy.source == tmp_path / "policy.yaml"


def test_broken_grants_file_is_a_problem_of_the_policy(tmp_path: Path) -> None:
    (tmp_path / "grants.json").write_text(json.dumps({"ci": {"token_sha256": "short"}}))
    (tmp_path / "policy.yaml").write_text("version: '1'\ngrants_file: grants.json\n")
    with pytest.raises(PolicyLoadError) as raised:
        load_policy(tmp_path / "policy.yaml")
    (problem,) = raised.value.problems
    assert (problem.path, problem.line) == ("grants_file", 2)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as raised:
        load_policy(tmp_path / "missing.yaml")
    assert raised.value.source == str(tmp_path / "missing.yaml")


def warning_paths(text: str) -> list[str]:
    return [w.path for w in load_policy_text(text).warnings]


def test_warnings() -> None:
    assert warning_paths("tools: {no_such_tool: {}}") == ["tools.no_such_tool"]
    assert warning_paths(
        "tools: {run_code: {deny_if: [{path: args.code, op: contains, value: socket}]}}"
    ) == ["tools.run_code.deny_if[0].path"]
    assert (
        warning_paths(
            "tools: {run_code: {require: [{path: args.code, op: exists}], "
            "deny_if: [{path: args.code, op: contains, value: socket}]}}"
        )
        == []
    )
    assert (
        warning_paths(
            "tools: {run_code: {args_schema: {type: object, required: [code]}, "
            "deny_if: [{path: args.code, op: contains, value: socket}]}}"
        )
        == []
    )
    assert warning_paths(
        "tools: {pip_install_package: {require: [{path: args.package_name, op: regex, "
        "value: '[a-z]+'}]}}"
    ) == ["tools.pip_install_package.require[0].value"]
    assert warning_paths("mode: off\ndefault: allow") == ["mode", "default"]


def test_policy_is_immutable() -> None:
    policy = load_policy_text(SEED)
    with pytest.raises(pydantic.ValidationError) as raised:
        policy.default = "allow"
    assert [(e["type"], e["loc"]) for e in raised.value.errors()] == [
        ("frozen_instance", ("default",))
    ]
    assert isinstance(policy, Policy) and policy.default == load_policy_text(SEED).default
