"""`sandgate doctor`, run as a user would: one line per layer of every engine, and an exit
status that says whether an engine the policy routes to would refuse to start."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandboxes import CATALOG, layer_names
from tests.conftest import IN_CI
from tests.processes import sandgate_command

DOCTOR_TIMEOUT_S = 120.0
LACKING = ("net_namespace", "no_new_privs")
"""The layers a host without util-linux on PATH lacks."""

Report = dict[str, dict[str, tuple[str, str]]]
"""engine key → layer name → (state, requirement)."""


def doctor(policy: Path, *, path: str | None = None) -> tuple[int, Report, str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    done = subprocess.run(
        [sandgate_command(), "doctor", "--policy", str(policy)],
        capture_output=True,
        text=True,
        env=env,
        timeout=DOCTOR_TIMEOUT_S,
        check=False,
    )
    return done.returncode, _parse(done.stdout), done.stdout


def _parse(text: str) -> Report:
    report: Report = {}
    section: dict[str, tuple[str, str]] | None = None
    for line in text.splitlines():
        head = line.split(" (", 1)[0]
        if head in CATALOG:
            section = report.setdefault(head, {})
        elif section is not None and line.startswith("  "):
            fields = line.split()
            state = "in force" if fields[:2] == ["in", "force"] else fields[0]
            rest = fields[2:] if state == "in force" else fields[1:]
            name, need = rest[0], " ".join(rest[1:3]) if rest[1] == "not" else rest[1]
            section[name] = (state, need)
    return report


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("tools:\n  run_code: {engine: pyodide}\n")
    return path


@pytest.fixture
def empty_path(tmp_path: Path) -> str:
    folder = tmp_path / "empty-path"
    folder.mkdir()
    return str(folder)


def test_it_prints_a_line_per_layer_of_every_engine(policy: Path) -> None:
    code, report, text = doctor(policy)
    if not IN_CI and "cannot tell" in text:
        pytest.skip("no Docker daemon to ask about the container layers")
    assert set(report) == set(CATALOG), text
    for key, layers in report.items():
        assert tuple(layers) == layer_names(key), text
        assert all(need == "required" for _state, need in layers.values()), text
    assert {state for state, _need in report["wasm"].values()} == {"in force"}
    expected = 0 if all(s == "in force" for s, _ in report["pyodide"].values()) else 1
    assert code == expected, text


def test_a_required_layer_missing_for_a_routed_engine_exits_1(
    policy: Path, empty_path: str
) -> None:
    code, report, text = doctor(policy, path=empty_path)
    assert code == 1, text
    for name in LACKING:
        assert report["pyodide"][name] == ("MISSING", "required"), text


def test_layers_the_policy_accepts_to_lose_do_not_fail(tmp_path: Path, empty_path: str) -> None:
    accepted = [name for name in layer_names("pyodide") if name not in LACKING]
    policy = tmp_path / "lax.yaml"
    policy.write_text(
        "tools:\n  run_code: {engine: lax}\n"
        f"engines:\n  lax:\n    kind: pyodide\n    require: [{', '.join(accepted)}]\n"
    )
    code, report, text = doctor(policy, path=empty_path)
    for name in LACKING:
        assert report["pyodide"][name] == ("MISSING", "not required"), text
    if os.geteuid() == 0:  # the cgroup layers need root; CI runs as root
        assert code == 0, text


def test_a_policy_with_an_unknown_layer_exits_2(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("engines:\n  lax:\n    kind: pyodide\n    require: [firewall]\n")
    done = subprocess.run(
        [sandgate_command(), "doctor", "--policy", str(policy)],
        capture_output=True,
        text=True,
        timeout=DOCTOR_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 2
    assert "engines.lax.require" in done.stderr and "'firewall'" in done.stderr
