"""Setup and start-up: idempotent setup, a clear error without assets, the jail report."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sandboxes import EngineUnavailable
from sandboxes.pyodide import PYODIDE_VERSION, PyodideEngine, setup_pyodide

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]


def test_setup_is_fast_once_done(assets_dir: Path) -> None:
    lines: list[str] = []
    began = time.monotonic()
    assert setup_pyodide(assets_dir, progress=lines.append) == assets_dir
    assert time.monotonic() - began < 2.0
    assert lines == [f"pyodide: ready in {assets_dir}"]
    assert (assets_dir / f"pyodide-{PYODIDE_VERSION}" / "pyodide.asm.wasm").is_file()


async def test_start_without_assets_says_what_to_run(tmp_path: Path) -> None:
    engine = PyodideEngine(assets_dir=tmp_path / "empty")
    with pytest.raises(EngineUnavailable) as missing:
        await engine.start()
    assert str(missing.value) == "Pyodide assets are missing: run `sandgate setup pyodide`"
    await engine.aclose()


async def test_the_engine_reports_its_jail(engine: PyodideEngine) -> None:
    assert engine.name == "pyodide"
    assert engine.jail is not None and engine.jail.cpu_rlimit
