"""The host file layer: walks by descriptor that count real disk use, reads that never block,
removal however deep."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from sandboxes import Limits, WorkspacePaths
from sandboxes._files import (
    BLOCK_BYTES,
    MAX_WALK_DEPTH,
    FileRefused,
    HostIO,
    HostIOBusy,
    HostIOTimeout,
    disk_usage,
    drop_foreign_links,
    empty_folder,
    read_file,
    read_regular_file,
    remove_tree,
    scan,
    scan_dropping_foreign_links,
    snapshot,
)

NAME_60 = "d" * 60
DEEP_LEVELS = 70
"""70 levels of 60-character names: past PATH_MAX (4096) from any root."""


def make_deep(root: Path, levels: int, name: str = NAME_60, data: bytes = b"x" * 10) -> str:
    """Folders `levels` deep under `root` (made by descriptor), a file `leaf` at the bottom;
    returns the file's root-relative path."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        out = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)
    return "/".join([name] * levels + ["leaf"])


def test_a_sparse_file_counts_the_blocks_it_occupies_not_its_length(tmp_path: Path) -> None:
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(190 * 1024 * 1024)
    usage = disk_usage(tmp_path)
    assert usage.files == 1
    assert usage.bytes == os.lstat(tmp_path / "sparse").st_blocks * BLOCK_BYTES
    assert usage.bytes < 1024 * 1024
    assert snapshot(tmp_path) == {
        "sparse": (190 * 1024 * 1024, os.lstat(tmp_path / "sparse").st_mtime_ns)
    }


def test_folders_links_and_empty_files_count_as_inodes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "empty").touch()
    (tmp_path / "link").symlink_to("/etc/passwd")
    os.link(tmp_path / "a" / "empty", tmp_path / "second-name")
    usage = disk_usage(tmp_path)
    assert usage.files == 3  # a, empty (two names, one inode), link
    assert usage.bytes >= os.lstat(tmp_path / "a").st_blocks * BLOCK_BYTES
    assert usage.complete


def test_a_tree_past_path_max_is_walked_and_counted(tmp_path: Path) -> None:
    rel = make_deep(tmp_path, DEEP_LEVELS)
    with pytest.raises(OSError) as too_long:  # no path string reaches it
        os.stat(tmp_path / rel)
    assert too_long.value.errno == errno.ENAMETOOLONG
    found = scan(tmp_path)
    assert list(found.files) == [rel]
    assert found.usage.files == DEEP_LEVELS + 1
    assert found.usage.complete
    assert read_file(tmp_path, rel, max_bytes=100) == b"x" * 10


def test_a_tree_deeper_than_the_walk_depth_is_incomplete_hence_over(tmp_path: Path) -> None:
    make_deep(tmp_path, MAX_WALK_DEPTH + 5, name="d")
    usage = disk_usage(tmp_path)
    assert not usage.complete
    assert usage.over(Limits(workspace_bytes=1 << 40, workspace_files=1 << 30))


def _linked_workspace(root: Path) -> WorkspacePaths:
    """A workspace with a deep file, a file linked twice inside it, and one link each (in the
    files and in the site folder) to a file outside."""
    workspace = WorkspacePaths(root / "files", root / "site")
    workspace.files.mkdir(parents=True)
    workspace.site.mkdir()
    (root / "outside.txt").write_text("the host's")
    os.link(root / "outside.txt", workspace.files / "foreign.txt")
    os.link(root / "outside.txt", workspace.site / "foreign.pth")
    (workspace.files / "own.txt").write_text("mine")
    os.link(workspace.files / "own.txt", workspace.files / "own-too.txt")
    make_deep(workspace.files, 3, "sub")
    return workspace


@pytest.mark.parametrize("with_links", [True, False])
def test_one_walk_drops_foreign_links_and_scans_as_the_two_did(
    tmp_path: Path, with_links: bool
) -> None:
    one, two = _linked_workspace(tmp_path / "one"), _linked_workspace(tmp_path / "two")
    if not with_links:
        for workspace in (one, two):
            (workspace.files / "foreign.txt").unlink()
    found, dropped = scan_dropping_foreign_links(one)
    assert dropped == drop_foreign_links(two)
    assert dropped == (("foreign.txt",) if with_links else ()) + ("site/foreign.pth",)
    assert found == scan(one.files)  # what a walk after the drop finds
    assert found.usage == scan(two.files).usage
    assert "sub/sub/sub/leaf" in found.files
    assert (tmp_path / "one" / "outside.txt").read_text() == "the host's"
    assert (one.files / "own-too.txt").exists()  # links among its own files are kept


def test_usage_over_names_both_budgets() -> None:
    from sandboxes._files import DiskUsage

    limits = Limits(workspace_bytes=1000, workspace_files=10)
    assert not DiskUsage(1000, 10).over(limits)
    assert DiskUsage(1001, 1).over(limits)
    assert DiskUsage(0, 11).over(limits)


def test_stop_after_files_ends_the_walk_early(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").touch()
    assert disk_usage(tmp_path, stop_after_files=9).files == 10


def test_empty_folder_removes_trees_deeper_than_the_walk_and_past_path_max(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    make_deep(root, DEEP_LEVELS)
    os.mkdir(root / "x")
    make_deep(root / "x", MAX_WALK_DEPTH * 2 + 3, name="e")
    (root / "out").symlink_to(tmp_path)
    (tmp_path / "keep").write_text("outside")
    left = empty_folder(root)
    assert left.files == 0 and left.complete
    assert os.listdir(root) == []
    assert (tmp_path / "keep").read_text() == "outside"
    remove_tree(root)
    assert not root.exists()


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "symlink", "folder"])
def test_only_regular_files_are_read_and_others_are_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "thing"
    keep: socket.socket | None = None
    if kind == "fifo":
        os.mkfifo(path)
        expected = "a FIFO (named pipe)"
    elif kind == "socket":
        keep = socket.socket(socket.AF_UNIX)
        keep.bind(str(path))
        expected = "a socket"
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null
        expected = "a character device"
    elif kind == "symlink":
        (tmp_path / "target").write_text("secret")
        path.symlink_to(tmp_path / "target")
        expected = "a symbolic link"
    else:
        path.mkdir()
        expected = "a folder"
    try:
        began = time.monotonic()
        with pytest.raises(FileRefused) as refused:
            read_file(tmp_path, "thing", max_bytes=1024)
        assert time.monotonic() - began < 1.0
        assert refused.value.got == expected
        assert refused.value.expected == "a regular file"
        assert read_regular_file(tmp_path, "thing", max_bytes=1024) is None
    finally:
        if keep is not None:
            keep.close()


def test_a_read_is_bounded_in_size(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"y" * 2048)
    with pytest.raises(FileRefused) as refused:
        read_file(tmp_path, "big", max_bytes=1024)
    assert refused.value.expected == "a file of at most 1024 bytes"


def test_paths_leaving_the_root_are_refused(tmp_path: Path) -> None:
    for rel in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(FileRefused):
            read_file(tmp_path, rel, max_bytes=10)


@pytest.mark.anyio
async def test_a_grants_stuck_host_operations_count_against_that_grant_only() -> None:
    io = HostIO(threads=8, per_grant=2, timeout_s=0.5)
    release = threading.Event()

    def stuck() -> str:
        release.wait(10)
        return "late"

    try:
        first = [asyncio.ensure_future(io.call("alice", stuck)) for _ in range(2)]
        for task in first:
            with pytest.raises(HostIOTimeout):
                await task
        assert io.in_flight("alice") == 2
        with pytest.raises(HostIOBusy):
            await io.call("alice", lambda: "again")
        assert await io.call("bob", lambda: "bob served") == "bob served"
    finally:
        release.set()
    for _ in range(100):
        if io.in_flight("alice") == 0:
            break
        await asyncio.sleep(0.01)
    assert io.in_flight("alice") == 0
    assert await io.call("alice", lambda: "served again") == "served again"
