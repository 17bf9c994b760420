"""Every package's public API is a sorted `__all__` (isort style: CONSTANTS, Classes,
functions) of names that exist."""

from __future__ import annotations

import importlib

import pytest

import sandboxes
import sandboxes.pyodide

PACKAGES = [
    "policies",
    "runner",
    "runner.batch",
    "runner.cli",
    "runner.cluster",
    "runner.operator",
    "runner.packages.mirror",
    "sandboxes",
    "sandboxes.container",
    "sandboxes.egress",
    "sandboxes.pyodide",
    "sandboxes.wasm",
]


def _isort_key(name: str) -> tuple[int, str]:
    if name.isupper():
        return 0, name
    return (1 if name[0].isupper() else 2), name


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_key), f"{name}.__all__ is not sorted"
    missing = [item for item in exported if not hasattr(module, item)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"


def test_host_mount_is_one_type_exported_by_sandboxes_and_its_pyodide_engine() -> None:
    assert "HostMount" in sandboxes.__all__
    assert "HostMount" in sandboxes.pyodide.__all__
    assert sandboxes.HostMount is sandboxes.pyodide.HostMount
