"""Operator mounts on every engine: `/mnt/NAME`, read-only refused, read-write written back,
files and images reported as `/mnt/NAME/…`, links never followed out of a mount.

One behaviour, four engines (wasm, pyodide, container with runc and with gVisor's runsc), the
same assertions. In CI (`CI=true`) an engine that cannot start fails; elsewhere it skips.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxes import (
    ExecutionPlan,
    HostMount,
    Image,
    Limits,
    Program,
    RunResult,
    WorkspacePaths,
    stopped_for_workspace,
)
from tests.guest_code import TRY_ALL_REFUSED
from tests.sandboxes.conftest import Target

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
SECRET = "sg-mount-secret-7c1e"
_ids = itertools.count()

REFUSED = TRY_ALL_REFUSED + "print(sorted(allowed))\n"
"""Guest code: try each of `attempts` (name → change), print those that went through."""


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host file no mount holds: links in the mounts point at it."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    return secret


@pytest.fixture
def mounted(tmp_path: Path, outside: Path) -> WorkspacePaths:
    """A workspace with a read-only mount `data` and a read-write mount `out`, each holding a
    link to `outside` (absolute) and one that climbs out with `..`."""
    files, site = tmp_path / "ws" / "files", tmp_path / "ws" / "site"
    files.mkdir(parents=True)
    site.mkdir()
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "sub").mkdir(parents=True)
    out.mkdir()
    (data / "sub" / "table.csv").write_text("x\n1\n")
    (out / "kept.txt").write_text("from the host")
    for mount in (data, out):
        (mount / "leak").symlink_to(outside)
        (mount / "climb").symlink_to(Path("..") / outside.name)
    mounts = (HostMount("data", data, read_only=True), HostMount("out", out, read_only=False))
    return WorkspacePaths(files, site, mounts)


@pytest.fixture
def session_id() -> Iterator[str]:
    yield f"mounts-{next(_ids)}-{os.getpid()}"


def host_tree(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: file contents, `<dir>`, or `-> target` for a link."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "<dir>"
        else:
            found[rel] = path.read_bytes().decode("latin-1")
    return found


def mount_host(workspace: WorkspacePaths, name: str) -> Path:
    return next(m.host for m in workspace.mounts if m.name == name)


async def run(
    target: Target,
    workspace: WorkspacePaths,
    code: str,
    session: str,
    *,
    workspace_bytes: int = Limits().workspace_bytes,
) -> RunResult:
    plan = ExecutionPlan(
        decision_id=f"mounts-{next(_ids)}",
        engine=target.kind,
        runtime=target.runtime,
        program=Program("code", code),
        limits=Limits(wall_timeout_s=60.0, workspace_bytes=workspace_bytes),
        workspace=workspace,
        session_id=session,
    )
    try:
        result = await target.engine.run(plan)
    finally:
        await target.engine.end_session(plan.session_key)
    assert isinstance(result, RunResult)
    return result


async def test_code_reads_a_read_only_mount(
    target: Target, mounted: WorkspacePaths, session_id: str
) -> None:
    code = "print(open('/mnt/data/sub/table.csv').read(), end='')"
    result = await run(target, mounted, code, session_id)
    assert (result.status, result.stdout) == ("ok", "x\n1\n"), result.stderr
    assert result.files_written == ()


async def test_a_read_only_mount_refuses_writes_and_the_host_folder_is_unchanged(
    target: Target, mounted: WorkspacePaths, session_id: str
) -> None:
    data = mount_host(mounted, "data")
    before = host_tree(data)
    code = (
        """
import os
attempts = {
    'create': lambda: open('/mnt/data/new.txt', 'w').write('x'),
    'append': lambda: open('/mnt/data/sub/table.csv', 'a').write('2\\n'),
    'truncate': lambda: open('/mnt/data/sub/table.csv', 'w').close(),
    'unlink': lambda: os.unlink('/mnt/data/sub/table.csv'),
    'mkdir': lambda: os.mkdir('/mnt/data/made'),
    'rename': lambda: os.rename('/mnt/data/sub', '/mnt/data/moved'),
}
"""
        + REFUSED
    )
    result = await run(target, mounted, code, session_id)
    assert (result.status, result.stdout) == ("ok", "[]\n"), result.stderr
    assert host_tree(data) == before
    assert result.files_written == ()


async def test_a_write_to_a_read_write_mount_lands_on_the_host_and_is_reported(
    target: Target, mounted: WorkspacePaths, session_id: str
) -> None:
    code = (
        "import os\n"
        "open('/workspace/w.txt', 'w').write('ws')\n"
        "os.makedirs('/mnt/out/deep', exist_ok=True)\n"
        "open('/mnt/out/deep/x.txt', 'w').write('from the run')\n"
        "open('/mnt/out/kept.txt', 'a').write(' and the run')\n"
    )
    result = await run(target, mounted, code, session_id)
    assert result.status == "ok", result.stderr
    out = mount_host(mounted, "out")
    assert (out / "deep" / "x.txt").read_text() == "from the run"
    assert (out / "kept.txt").read_text() == "from the host and the run"
    assert result.files_written == ("w.txt", "/mnt/out/deep/x.txt", "/mnt/out/kept.txt")


async def test_an_image_written_to_a_mount_comes_back_with_its_mount_path(
    target: Target, mounted: WorkspacePaths, session_id: str
) -> None:
    code = (
        "import os\nos.mkdir('/mnt/out/plots')\n"
        f"open('/mnt/out/plots/p.png', 'wb').write({PNG!r})\n"
    )
    result = await run(target, mounted, code, session_id)
    assert result.status == "ok", result.stderr
    assert result.images == (Image("/mnt/out/plots/p.png", "image/png", PNG),)
    assert result.files_written == ("/mnt/out/plots/p.png",)
    assert (mount_host(mounted, "out") / "plots" / "p.png").read_bytes() == PNG


async def test_a_link_in_a_mount_is_never_followed_out_of_it(
    target: Target, mounted: WorkspacePaths, session_id: str, outside: Path
) -> None:
    code = """
import os
seen = []
for path in ('/mnt/data/leak', '/mnt/data/climb', '/mnt/out/leak', '/mnt/out/climb'):
    try:
        seen.append(open(path).read())
    except OSError:
        pass
for path in ('/mnt/out/leak', '/mnt/out/climb'):
    try:
        open(path, 'w').write('overwritten')
    except OSError:
        pass
print(seen)
"""
    result = await run(target, mounted, code, session_id)
    assert result.status == "ok", result.stderr
    assert SECRET not in result.stdout
    assert outside.read_text() == SECRET
    for name in ("data", "out"):
        assert os.readlink(mount_host(mounted, name) / "leak") == str(outside)


async def test_two_mounts_at_once(target: Target, mounted: WorkspacePaths, session_id: str) -> None:
    code = (
        "rows = open('/mnt/data/sub/table.csv').read().split()\n"
        "open('/mnt/out/rows.txt', 'w').write(str(len(rows)))\n"
        "print(sorted(n for n in __import__('os').listdir('/mnt/out') if n != 'climb'))\n"
    )
    result = await run(target, mounted, code, session_id)
    assert result.status == "ok", result.stderr
    assert result.stdout == "['kept.txt', 'leak', 'rows.txt']\n" or result.stdout == (
        "['kept.txt', 'rows.txt']\n"  # pyodide copies regular files only: no link is shown
    )
    assert (mount_host(mounted, "out") / "rows.txt").read_text() == "2"
    assert result.files_written == ("/mnt/out/rows.txt",)


async def test_a_mounts_files_count_against_nothing_of_the_workspace_budget(
    target: Target, mounted: WorkspacePaths, session_id: str
) -> None:
    """The workspace and a read-write mount are two folders, each under the budget."""
    code = (
        "open('/workspace/half.bin', 'wb').write(b'w' * (600 * 1024))\n"
        "open('/mnt/out/half.bin', 'wb').write(b'm' * (600 * 1024))\n"
    )
    result = await run(target, mounted, code, session_id, workspace_bytes=1 << 20)
    assert (result.status, result.limit) == ("ok", None), result.stderr
    assert result.files_written == ("half.bin", "/mnt/out/half.bin")
    assert (mount_host(mounted, "out") / "half.bin").stat().st_size == 600 * 1024


async def test_a_read_write_mount_is_held_to_the_budget_of_one_folder(
    target: Target, mounted: WorkspacePaths, session_id: str
) -> None:
    code = "open('/mnt/out/big.bin', 'wb').write(b'm' * (3 << 20))\n"
    result = await run(target, mounted, code, session_id, workspace_bytes=1 << 20)
    assert stopped_for_workspace(result.limit), (result.status, result.limit, result.stderr)
