"""Fixtures for the mirror tests: one mirror synced from the real upstream index per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runner.packages.mirror import load_allowlist, sync_mirror

from ._builders import RealMirror

REAL_ALLOWLIST = """\
[packages]
six = "*"
python-dateutil = ">=2.8,<3"

[wasm]
markupsafe = "*"
"""
"""Small real packages: python-dateutil 2.x needs six; markupsafe has no pure-Python wheel."""


@pytest.fixture(scope="session")
def real_mirror(tmp_path_factory: pytest.TempPathFactory) -> RealMirror:
    """Sync `REAL_ALLOWLIST` from the configured upstream index (PyPI) once per session."""
    root = tmp_path_factory.mktemp("real-mirror")
    allowlist_file = root / "allow.toml"
    allowlist_file.write_text(REAL_ALLOWLIST)
    lines: list[str] = []
    report = sync_mirror(load_allowlist(allowlist_file), root / "mirror", progress=lines.append)
    return RealMirror(root / "mirror", allowlist_file, report, tuple(lines))


@pytest.fixture
def mirror_copy(real_mirror: RealMirror, tmp_path: Path) -> Path:
    """A private copy of the real mirror, for tests that damage it."""
    copy = tmp_path / "mirror"
    shutil.copytree(real_mirror.path, copy)
    return copy
