"""The image's default policy (the shipped default.yaml with the Pyodide profile of a non-root
container appended) and `$SANDGATE_POLICY`, which points `serve` and `doctor` at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import load_policy
from runner.cli._main import _parser
from tests.image.conftest import REPO

IMAGE_ENGINES = REPO / "scripts" / "server-image" / "policy-engines.yaml"
PYODIDE_LAYERS_IN_A_CONTAINER = {
    "js_realm", "deno_permissions", "v8_heap_cap", "wasm_memory_cap", "cpu_rlimit", "no_new_privs",
}  # fmt: skip


def test_the_image_policy_is_the_default_with_only_the_pyodide_profile_added(
    tmp_path: Path,
) -> None:
    image_policy = tmp_path / "policy.yaml"  # as scripts/server-image.sh makes it
    image_policy.write_text(
        (REPO / "policies" / "default.yaml").read_text() + IMAGE_ENGINES.read_text()
    )
    shipped = load_policy(REPO / "policies" / "default.yaml")
    image = load_policy(image_policy)
    assert set(image.engines) == {"pyodide"}
    assert image.engines["pyodide"].kind == "pyodide"
    assert set(image.engines["pyodide"].require or ()) == PYODIDE_LAYERS_IN_A_CONTAINER
    assert image.model_dump(exclude={"engines"}) == shipped.model_dump(exclude={"engines"})


@pytest.mark.parametrize("command", ["serve", "doctor"])
def test_sandgate_policy_names_the_policy_unless_policy_is_given(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDGATE_POLICY", "/etc/sandgate/policy.yaml")
    assert _parser(command).parse_args([command]).policy == Path("/etc/sandgate/policy.yaml")
    given = _parser(command).parse_args([command, "--policy", "mine.yaml"])
    assert given.policy == Path("mine.yaml")
    monkeypatch.delenv("SANDGATE_POLICY")
    assert _parser(command).parse_args([command]).policy is None
