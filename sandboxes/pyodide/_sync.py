"""Copy a session's folders into its guest and the guest's changes back, never via a link.

Deno gets no access to the workspace at all: its permissions are fixed when a pooled process
starts, before any session owns it, and Deno follows symlinks it finds inside an allowed folder.
So the host sends the files that changed since the last run (`put`/`delete` lines, one file per
line) and fetches the files the run changed (`get`), reading and writing with `O_NOFOLLOW` on
every path component, within the workspace size budget.

The guest holds several such folders (roots): the workspace, the installed packages (`/site`,
never copied back) and each operator mount (`/mnt/NAME`, copied back only when read-write).
Links inside any of them on the host are skipped, never followed.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._files import Snapshot, drop_foreign_links, folder_beneath, read_regular_file, snapshot
from .._types import HostMount, WorkspacePaths

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest single file copied either way."""
BATCH_BYTES = 16 * 1024 * 1024
"""Bytes read from disk per batch of files sent to a guest."""
WORKSPACE_ROOT = "/workspace"
SITE_ROOT = "/site"
MOUNTS_ROOT = "/mnt"
_MOUNT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What `host.mjs` accepts as a mount name (it ignores any other)."""


@dataclass(frozen=True, slots=True)
class Root:
    """One guest folder mirrored from a host folder.

    Attributes:
        guest: Where the guest sees it (`/workspace`, `/site`, `/mnt/NAME`).
        host: The host folder.
        writable: Whether the guest's changes are copied back (workspace, read-write mounts).
    """

    guest: str
    host: Path
    writable: bool


def mount_root(mount: HostMount) -> str:
    """The guest path of an operator mount."""
    return f"{MOUNTS_ROOT}/{mount.name}"


def roots_of(workspace: WorkspacePaths) -> tuple[Root, ...]:
    """The guest folders of a session: workspace, site, then each operator mount.

    Raises:
        ValueError: a mount name is not 1-64 letters, digits, `-` and `_`, or comes twice.
    """
    names = [m.name for m in workspace.mounts]
    for name in names:
        if not _MOUNT_NAME.fullmatch(name) or names.count(name) > 1:
            raise ValueError(
                f"WorkspacePaths.mounts: expected unique names of 1-64 letters, digits, - and _, "
                f"got {name!r}; check the names before building the plan"
            )
    return (
        Root(WORKSPACE_ROOT, workspace.files, True),
        Root(SITE_ROOT, workspace.site, False),
        *(Root(mount_root(m), m.host, not m.read_only) for m in workspace.mounts),
    )


@dataclass(slots=True)
class Mirror:
    """What a guest already holds of the host folders.

    Attributes:
        held: Guest root → path → (size, mtime) of the host file at sync time.
        mounts: The operator mounts the guest was set up with; `None` before its first run.
    """

    held: dict[str, Snapshot] = field(default_factory=dict)
    mounts: tuple[HostMount, ...] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send before a run, and what the host looked like then.

    Attributes:
        roots: The guest folders of this run.
        before: Writable roots: the host folder's files before the run.
        send: (guest root, relative path, size) of each file to copy in.
        delete: Guest root → paths to delete in the guest.
        held: Guest root → what the guest will hold once `send` and `delete` are done.
        mount: Operator mounts to set up in the guest first (on a session's first run).
    """

    roots: tuple[Root, ...]
    before: dict[str, Snapshot]
    send: tuple[tuple[str, str, int], ...]
    delete: dict[str, list[str]]
    held: dict[str, Snapshot]
    mount: tuple[HostMount, ...] = ()

    @property
    def hosts(self) -> dict[str, Path]:
        """Guest root → host folder."""
        return {root.guest: root.host for root in self.roots}


def safe_rel(rel: object) -> str | None:
    """`rel` normalised if it is a plain relative path (no `..`, no absolute, no NUL)."""
    if not isinstance(rel, str) or rel.startswith("/") or "\0" in rel:
        return None
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _outgoing(now: Snapshot, known: Snapshot, budget: int) -> tuple[list[str], list[str], Snapshot]:
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
    """Compare the host folders with what the guest holds (blocking: call it in a thread).

    Each root copies in at most `budget` bytes of new or changed files per run.
    """
    drop_foreign_links(workspace)
    roots = roots_of(workspace)
    before: dict[str, Snapshot] = {}
    send: list[tuple[str, str, int]] = []
    delete: dict[str, list[str]] = {}
    held: dict[str, Snapshot] = {}
    for root in roots:
        now = snapshot(root.host) if root.host.is_dir() else {}
        if root.writable:
            before[root.guest] = now
        files, gone, held[root.guest] = _outgoing(now, mirror.held.get(root.guest, {}), budget)
        send += [(root.guest, rel, held[root.guest][rel][0]) for rel in files]
        delete[root.guest] = gone
    mount = workspace.mounts if mirror.mounts is None else ()
    return Plan(roots, before, tuple(send), delete, held, mount)


def read_batch(
    hosts: Mapping[str, Path], items: tuple[tuple[str, str, int], ...]
) -> list[tuple[str, str, bytes]]:
    """The bytes of `items` (root, rel, size), read without following links; missing skipped."""
    out: list[tuple[str, str, bytes]] = []
    for root, rel, _size in items:
        data = read_regular_file(hosts[root], rel, max_bytes=MAX_FILE_BYTES)
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
    return folder_beneath(root, parts[:-1], create=create)


def remove_empty_folders(root: Path, rels: list[str]) -> int:
    """Remove the folders `root/rel` (deepest first) that are empty, by descriptor, never
    through a link; returns how many went."""
    removed = 0
    for rel in sorted(set(rels), key=lambda r: r.count("/"), reverse=True):
        parts = rel.split("/")
        fd = _parent_fd(root, parts, create=False)
        if fd is None:
            continue
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(parts[-1], dir_fd=fd)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
