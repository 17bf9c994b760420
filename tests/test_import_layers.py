"""The import layers hold: `runner -> policies -> sandboxes` with nothing back, no engine package
imports another, only `runner` speaks MCP. The contracts live in pyproject.toml
(`[tool.importlinter]`); `lint-imports` checks them here, so the README's test command does."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import sandboxes

ROOT = Path(__file__).resolve().parent.parent
LINT_TIMEOUT_S = 120.0


def _contracts() -> dict[str, str]:
    """id -> name of every contract pyproject.toml declares."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c["name"] for c in config["contracts"]}


def _lint_imports(cwd: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("lint-imports")
    assert command.exists(), f"{command} is missing: pip install -e '.[dev]' (import-linter)"
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(command), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=LINT_TIMEOUT_S,
        check=False,
    )


def test_the_layer_contracts_are_the_ones_the_design_names() -> None:
    assert set(_contracts()) == {"layers", "engines", "mcp"}


def test_every_engine_package_is_in_the_independence_contract() -> None:
    """A new engine package under `sandboxes/` is kept apart from the others too."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [engines] = [c for c in config["contracts"] if c["id"] == "engines"]
    packages = {f"sandboxes.{m.name}" for m in pkgutil.iter_modules(sandboxes.__path__) if m.ispkg}
    assert sorted(engines["modules"]) == sorted(packages)


def test_every_import_layer_contract_is_kept() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in _contracts().values():
        assert f"{name} KEPT" in done.stdout, done.stdout
    assert "0 broken" in done.stdout, done.stdout


def _toml_value(value: object) -> str:
    return json.dumps(value)  # strings, booleans and lists of strings are the same in TOML


def test_an_import_against_each_contract_breaks_it(tmp_path: Path) -> None:
    """The same contracts over a throwaway tree with one back-import of each kind: each is
    reported broken, so the check above can fail."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in config.items() if k != "contracts"]
    for contract in config["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in contract.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    modules = {
        "runner/__init__.py": "import policies\n",
        "policies/__init__.py": "import sandboxes\nimport mcp\n",  # mcp: only runner may
        "sandboxes/__init__.py": "from policies import __name__ as _\n",  # back up a layer
        "sandboxes/wasm/__init__.py": "from sandboxes.pyodide import __name__ as _\n",
        "sandboxes/pyodide/__init__.py": "",
        "sandboxes/container/__init__.py": "",
        "sandboxes/egress/__init__.py": "",
    }
    for path, text in modules.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)

    done = _lint_imports(tmp_path, pythonpath=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    for name in _contracts().values():
        assert f"{name} BROKEN" in done.stdout, done.stdout
