"""Copy a session's workspace into its guest and the guest's changes back, never via a link.

Deno gets no access to the workspace at all: its permissions are fixed when a pooled process
starts, before any session owns it, and Deno follows symlinks it finds inside an allowed folder.
So the host sends the files that changed since the last run (`put`/`delete` lines, one file per
line) and fetches the files the run changed (`get`), reading and writing with `O_NOFOLLOW` on
every path component, within the workspace size budget.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .._files import Snapshot, drop_foreign_links, read_regular_file, snapshot
from .._types import WorkspacePaths

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest single file copied either way."""
BATCH_BYTES = 16 * 1024 * 1024
"""Bytes read from disk per batch of files sent to a guest."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass(slots=True)
class Mirror:
    """What a guest already holds of the host folders (path → size, mtime at sync time)."""

    files: Snapshot = field(default_factory=dict)
    site: Snapshot = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send before a run: files to copy in and paths to delete, per guest folder."""

    before: Snapshot
    send: tuple[tuple[str, str, int], ...]
    """(guest root, relative path, size) of each file to copy in."""
    delete: dict[str, list[str]]
    held: Snapshot
    site_held: Snapshot


def safe_rel(rel: object) -> str | None:
    """`rel` normalised if it is a plain relative path (no `..`, no absolute, no NUL)."""
    if not isinstance(rel, str) or rel.startswith("/") or "\0" in rel:
        return None
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _outgoing(root: Path, known: Snapshot, budget: int) -> tuple[list[str], list[str], Snapshot]:
    now = snapshot(root) if root.is_dir() else {}
    send: list[str] = []
    held: Snapshot = {p: sig for p, sig in known.items() if p in now}
    spent = 0
    for rel, sig in sorted(now.items()):
        if known.get(rel) == sig or sig[0] > MAX_FILE_BYTES or spent + sig[0] > budget:
            continue
        send.append(rel)
        held[rel] = sig
        spent += sig[0]
    return send, sorted(set(known) - set(now)), held


def plan(workspace: WorkspacePaths, mirror: Mirror, budget: int) -> Plan:
    """Compare the host folders with what the guest holds (blocking: call it in a thread)."""
    drop_foreign_links(workspace)
    before = snapshot(workspace.files) if workspace.files.is_dir() else {}
    files, files_gone, held = _outgoing(workspace.files, mirror.files, budget)
    site, site_gone, site_held = _outgoing(workspace.site, mirror.site, budget)
    send = tuple(
        [("/workspace", rel, held[rel][0]) for rel in files]
        + [("/site", rel, site_held[rel][0]) for rel in site]
    )
    delete = {"/workspace": files_gone, "/site": site_gone}
    return Plan(before, send, delete, held, site_held)


def read_batch(
    workspace: WorkspacePaths, items: tuple[tuple[str, str, int], ...]
) -> list[tuple[str, str, bytes]]:
    """The bytes of `items` (root, rel, size), read without following links; missing skipped."""
    out: list[tuple[str, str, bytes]] = []
    for root, rel, _size in items:
        folder = workspace.files if root == "/workspace" else workspace.site
        data = read_regular_file(folder, rel, max_bytes=MAX_FILE_BYTES)
        if data is not None:
            out.append((root, rel, data))
    return out


def batches(items: tuple[tuple[str, str, int], ...]) -> list[tuple[tuple[str, str, int], ...]]:
    """`items` cut into groups of about `BATCH_BYTES`."""
    groups: list[tuple[str, str, int]] = []
    out: list[tuple[tuple[str, str, int], ...]] = []
    size = 0
    for item in items:
        if groups and size + item[2] > BATCH_BYTES:
            out.append(tuple(groups))
            groups, size = [], 0
        groups.append(item)
        size += item[2]
    if groups:
        out.append(tuple(groups))
    return out


def write_file(root: Path, rel: str, data: bytes) -> bool:
    """Write `root/rel`, creating folders, never through a link (symbolic or hard) or over a
    non-file."""
    parts = rel.split("/")
    fd = _parent_fd(root, parts, create=True)
    if fd is None:
        return False
    try:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return False
            if st.st_nlink > 1:  # never write through a hard link: the name gets a new file
                os.unlink(parts[-1], dir_fd=fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        out = os.open(parts[-1], flags, 0o644, dir_fd=fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
        finally:
            os.close(out)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def unlink_file(root: Path, rel: str) -> bool:
    """Delete the regular file `root/rel` (never a link's target, never a folder)."""
    parts = rel.split("/")
    fd = _parent_fd(root, parts, create=False)
    if fd is None:
        return False
    try:
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return False
        os.unlink(parts[-1], dir_fd=fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _parent_fd(root: Path, parts: list[str], *, create: bool) -> int | None:
    """An fd of the folder holding `parts[-1]`, reached without following any link."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        return None
    return fd
