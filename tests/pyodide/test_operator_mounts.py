"""Operator mounts in the pyodide engine: `/mnt/NAME`, read-only or written back, never a link."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import cast

import pytest

from sandboxes import Limits, WorkspacePaths, workspace_limit
from sandboxes.pyodide import HostMount, PyodideEngine
from sandboxes.pyodide._process import DenoProcess
from sandboxes.pyodide._sync import Mirror, plan
from sandboxes.pyodide._transfer import copy_out
from tests.guest_code import TRY_ALL_REFUSED

from .conftest import make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture
def mounted(workspace: WorkspacePaths, tmp_path: Path) -> WorkspacePaths:
    """The workspace plus a read-only mount `data` and a read-write mount `out`."""
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "sub").mkdir(parents=True)
    out.mkdir()
    (data / "sub" / "table.csv").write_text("x\n1\n")
    (out / "kept.txt").write_text("from the host")
    mounts = (HostMount("data", data, read_only=True), HostMount("out", out, read_only=False))
    return dataclasses.replace(workspace, mounts=mounts)


def _host(mounted: WorkspacePaths, name: str) -> Path:
    return next(m.host for m in mounted.mounts if m.name == name)


async def test_a_read_only_mount_refuses_every_change_inside_the_guest(
    engine: PyodideEngine, mounted: WorkspacePaths, session_id: str
) -> None:
    code = (
        """
import os
open('/workspace/w.txt', 'w').write('w')
attempts = {
    'write': lambda: open('/mnt/data/sub/table.csv', 'a').write('2\\n'),
    'truncate': lambda: os.truncate('/mnt/data/sub/table.csv', 0),
    'chmod file': lambda: os.chmod('/mnt/data/sub/table.csv', 0o666),
    'chmod folder': lambda: os.chmod('/mnt/data/sub', 0o777),
    'utime': lambda: os.utime('/mnt/data/sub/table.csv', (1, 1)),
    'move in': lambda: os.rename('/workspace/w.txt', '/mnt/data/w.txt'),
    'move out': lambda: os.rename('/mnt/data/sub/table.csv', '/workspace/t.csv'),
    'symlink': lambda: os.symlink('/workspace', '/mnt/data/link'),
    'rmdir': lambda: os.rmdir('/mnt/data/sub'),
    'replace mount': lambda: os.rename('/mnt/out', '/mnt/data2'),
    'new mount': lambda: os.mkdir('/mnt/other'),
    'move mounts': lambda: os.rename('/mnt', '/mounts'),
    'remove mounts': lambda: os.rmdir('/mnt'),
}
"""
        + TRY_ALL_REFUSED
        + """
allowed, open('/mnt/data/sub/table.csv').read()
"""
    )
    result = await engine.run(make_plan(mounted, code, session=session_id))
    assert (result.status, result.value) == ("ok", "([], 'x\\n1\\n')"), result.stderr
    assert (_host(mounted, "data") / "sub" / "table.csv").read_text() == "x\n1\n"
    assert sorted(p.name for p in _host(mounted, "data").rglob("*")) == ["sub", "table.csv"]


async def test_a_read_write_mount_gets_writes_and_deletions_back(
    engine: PyodideEngine, mounted: WorkspacePaths, session_id: str
) -> None:
    code = (
        "import os\nos.makedirs('/mnt/out/a/b')\n"
        f"open('/mnt/out/a/b/plot.png', 'wb').write({PNG!r})\n"
        "os.remove('/mnt/out/kept.txt')"
    )
    result = await engine.run(make_plan(mounted, code, session=session_id))
    assert result.status == "ok", result.stderr
    out = _host(mounted, "out")
    assert (out / "a" / "b" / "plot.png").read_bytes() == PNG
    assert not (out / "kept.txt").exists()
    assert result.files_written == ("/mnt/out/a/b/plot.png",)
    assert [(i.path, i.data) for i in result.images] == [("/mnt/out/a/b/plot.png", PNG)]


async def test_a_file_changed_on_the_host_since_it_was_copied_in_is_not_deleted(
    mounted: WorkspacePaths,
) -> None:
    """A shared read-write mount: the guest deletes its copy of a file another session has
    rewritten meanwhile; the host keeps the newer file (no guest process needed)."""
    kept = _host(mounted, "out") / "kept.txt"
    gone = _host(mounted, "out") / "gone.txt"
    gone.write_text("old")
    sent = plan(mounted, Mirror(), budget=1 << 20)
    kept.write_text("newer, from another session")
    answer = {"files": {"/mnt/out": {"changed": [], "deleted": ["kept.txt", "gone.txt"]}}}
    mirror = Mirror()
    no_process = cast(DenoProcess, None)  # deletions alone never ask the guest for data
    settled = await copy_out(no_process, answer, sent, mirror, budget=1 << 20)
    assert kept.read_text() == "newer, from another session"
    assert not gone.exists()
    assert (settled.touched, settled.over_budget) == ((), False)
    assert mirror.mounts == mounted.mounts


async def test_a_read_write_mount_keeps_to_its_budget(
    engine: PyodideEngine, mounted: WorkspacePaths, session_id: str
) -> None:
    limits = Limits(wall_timeout_s=15.0, workspace_bytes=64 * 1024)
    code = "open('/mnt/out/big.bin', 'wb').write(b'x' * 100_000)"
    result = await engine.run(make_plan(mounted, code, session=session_id, limits=limits))
    assert (result.status, result.limit) == ("killed", workspace_limit(limits))
    assert "were not saved" in result.stderr
    assert not (_host(mounted, "out") / "big.bin").exists()


async def test_links_in_a_mount_on_the_host_are_not_followed(
    engine: PyodideEngine, mounted: WorkspacePaths, session_id: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    os.symlink(outside / "secret.txt", _host(mounted, "data") / "secret.txt")
    os.symlink(outside, _host(mounted, "out") / "outside")
    code = (
        "import os\nopen('/mnt/out/outside', 'w').write('guest')\n"
        "sorted(os.listdir('/mnt/data')), sorted(os.listdir('/mnt/out'))"
    )
    result = await engine.run(make_plan(mounted, code, session=session_id))
    assert result.value == "(['sub'], ['kept.txt', 'outside'])", result.stderr
    # The guest's regular file `outside` is not written through the host's link.
    assert os.path.islink(_host(mounted, "out") / "outside")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "host secret"


async def test_a_session_whose_mounts_change_starts_a_fresh_interpreter(
    engine: PyodideEngine, mounted: WorkspacePaths, session_id: str
) -> None:
    first = await engine.run(make_plan(mounted, "x = 1", session=session_id))
    assert first.status == "ok"
    fewer = dataclasses.replace(mounted, mounts=mounted.mounts[:1])
    code = "import os\nos.listdir('/mnt'), 'x' in globals()"
    second = await engine.run(make_plan(fewer, code, session=session_id))
    assert second.value == "(['data'], False)", second.stderr
    assert (second.state, second.state_note) == ("lost", "the operator mounts changed")
    assert "operator mounts changed" in second.stderr


@pytest.mark.parametrize("names", [("../up",), ("a/b",), ("",), ("same", "same")])
def test_mount_names_that_cannot_be_a_guest_folder_are_refused(
    workspace: WorkspacePaths, tmp_path: Path, names: tuple[str, ...]
) -> None:
    bad = dataclasses.replace(workspace, mounts=tuple(HostMount(n, tmp_path) for n in names))
    with pytest.raises(ValueError):
        plan(bad, Mirror(), budget=1 << 20)
