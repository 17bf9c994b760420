"""What a run borrows from the host: a session's files lent to a slot, and operator mounts.

Lending. An engine whose guest was made before anyone knew which session it would serve (a
prepared wasm guest, a warm container) was granted a *slot* folder of its own. A run lends the
session's files to the slot: one rename per top-level entry (same file system, no copy), and
after the run every entry of the slot is given back. Both engines move files with `lend` and
`give_back`, and keep their own crash record (wasm: the slot's `owner`, container: its
`claim.json`) around the moves.

Every step is made by descriptor: folders are opened with `O_NOFOLLOW | O_DIRECTORY`, entries
are judged with `lstat` (`follow_symlinks=False`) and moved with `rename(…, src_dir_fd,
dst_dir_fd)`. A link is moved as a link, never followed, wherever it points.

The clash rule of `give_back` (one rule for every engine): the session folder ends as it would
if the run had written to it directly, the run's change being the last.

- nothing of that name in the session: the run's entry is moved there;
- a file (or link, or any non-folder) over a non-folder: the run's replaces it (atomically);
- a folder over a folder: they merge, entry by entry, by this same rule;
- kinds differ (a folder where the session has a file, or the reverse): the session's entry is
  removed (a folder with everything in it, by descriptor) and the run's takes its name.

A clash can only happen when something wrote the session folder while its files were lent
(the runner's own tools, a crash recovery racing a new run); the run never loses its output,
and no name ever gets two entries (no `NAME.run-1` beside `NAME`).

An entry that cannot be given back (the session folder was moved to another disk meanwhile, a
permission) stays in the slot, is never copied half-way nor deleted, and `LendingIncomplete`
names it: the engine keeps its crash record and the slot, and moves an unclaimed slot to its
`lost+found` rather than delete it.

Operator mounts. The folders an operator shows code at `/mnt/NAME` (`HostMount`) are never
lent: they are shared by every session, and moving their files into one run's slot would hide
them from the others. Engines grant or bind them in place (wasm: a preopened directory,
read-only unless the mount is read-write; container: a bind mount with its read-only flag),
and use `MountsBefore` / `mount_changes` for what a run wrote there: guest paths
`/mnt/NAME/…` in `RunResult.files_written`, and the images among them, as the pyodide engine
reports them. A writable mount counts against nothing of the session's workspace budget; like
on pyodide, each writable mount is a folder of its own under the same per-folder budget
(`Limits.workspace_bytes` of disk, `Limits.workspace_files` inodes; one already past it may
shrink, not grow): `mount_budgets` gives what the engines' watchdogs hold each one to.

LendingIncomplete (SandboxError, OSError)   entries stayed in the slot; they are named
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ._errors import SandboxError
from ._files import (
    MAX_IMAGES,
    OPEN_DIR_FLAGS,
    DiskUsage,
    Snapshot,
    changed,
    disk_usage,
    empty_folder,
    images_among,
    scan,
)
from ._types import HostMount, Image, Limits

logger = logging.getLogger("sandgate.files")

MOUNTS_GUEST = "/mnt"
"""Where code sees the operator mounts: `/mnt/NAME`."""
MOUNT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a mount name may be (the pyodide guest accepts no other)."""


class LendingIncomplete(SandboxError, OSError):
    """Some entries could not be moved and stayed where they were (never deleted).

    Attributes:
        left: The names (relative to the folder they were moved from) still there.
    """

    def __init__(self, message: str, left: tuple[str, ...]) -> None:
        super().__init__(message)
        self.left = left


# -- lending ----------------------------------------------------------------------------------


def same_file_system(a: Path, b: Path) -> bool:
    """Whether `a` and `b` (both existing) are on one file system, so a rename moves between
    them; False when either cannot be looked at."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def lend(source: Path, slot: Path) -> tuple[str, ...]:
    """Move every top-level entry of `source` into the empty folder `slot` (one rename each;
    both on one file system). Returns the names moved.

    Raises:
        OSError: a rename failed; what was moved is given back first (`LendingIncomplete`
            when even that failed: those entries stay in the slot).
    """
    src = os.open(source, OPEN_DIR_FLAGS)
    try:
        dst = os.open(slot, OPEN_DIR_FLAGS)
        try:
            if os.listdir(dst):
                raise OSError(errno.ENOTEMPTY, f"the slot {slot} is not empty")
            moved: list[str] = []
            try:
                for name in sorted(os.listdir(src)):
                    os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
                    moved.append(name)
            except OSError:
                left = _give_back_at(dst, src, moved)
                if left:
                    raise LendingIncomplete(
                        f"could not lend {source} to {slot}, nor give back {len(left)} of the "
                        f"entries moved ({', '.join(left[:5])})",
                        left,
                    ) from None
                raise
            return tuple(moved)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def give_back(slot: Path, target: Path) -> tuple[str, ...]:
    """Move every entry of `slot` into `target` by the clash rule (module docstring). Returns
    the names given back.

    Raises:
        LendingIncomplete: some entries could not be moved; they stay in `slot`.
        OSError: `slot` or `target` is not a folder reached without links.
    """
    src = os.open(slot, OPEN_DIR_FLAGS)
    try:
        dst = os.open(target, OPEN_DIR_FLAGS)
        try:
            names = sorted(os.listdir(src))
            left = _give_back_at(src, dst, names)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    if left:
        raise LendingIncomplete(
            f"{len(left)} entries could not be moved from {slot} back to {target} "
            f"({', '.join(left[:5])}); they stay in {slot}",
            left,
        )
    return tuple(n for n in names if n not in left)


def _give_back_at(src: int, dst: int, names: Iterable[str], prefix: str = "") -> tuple[str, ...]:
    """Move `names` from folder `src` into folder `dst` by the clash rule; what stayed."""
    left: list[str] = []
    for name in names:
        try:
            left += _move_at(src, dst, name, prefix)
        except OSError as exc:
            logger.error("could not move %s%s back from a slot: %s", prefix, name, exc)
            left.append(prefix + name)
    return tuple(left)


def _move_at(src: int, dst: int, name: str, prefix: str) -> tuple[str, ...]:
    """Move `src/name` to `dst/name` by the clash rule; the paths that stayed behind."""
    mine = os.stat(name, dir_fd=src, follow_symlinks=False)
    try:
        there: os.stat_result | None = os.stat(name, dir_fd=dst, follow_symlinks=False)
    except FileNotFoundError:
        there = None
    if there is None:
        os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
        return ()
    ours, theirs = stat.S_ISDIR(mine.st_mode), stat.S_ISDIR(there.st_mode)
    if not ours and not theirs:
        os.replace(name, name, src_dir_fd=src, dst_dir_fd=dst)  # atomic: a file over a file
        return ()
    if ours and theirs:  # merge
        inner_src = os.open(name, OPEN_DIR_FLAGS, dir_fd=src)
        try:
            inner_dst = os.open(name, OPEN_DIR_FLAGS, dir_fd=dst)
            try:
                left = _give_back_at(
                    inner_src, inner_dst, sorted(os.listdir(inner_src)), f"{prefix}{name}/"
                )
            finally:
                os.close(inner_dst)
        finally:
            os.close(inner_src)
        if not left:
            os.rmdir(name, dir_fd=src)
        return left
    _remove_at(dst, name, there)  # kinds differ: the run's entry takes the name
    os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
    return ()


def _remove_at(parent: int, name: str, st: os.stat_result) -> None:
    """Remove `parent/name` (a folder with everything in it), by descriptor."""
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    inner = os.open(name, OPEN_DIR_FLAGS, dir_fd=parent)
    try:
        empty_folder(inner)
    finally:
        os.close(inner)
    os.rmdir(name, dir_fd=parent)


# -- operator mounts --------------------------------------------------------------------------


def mount_guest(mount: HostMount) -> str:
    """Where code sees an operator mount: `/mnt/NAME`."""
    return f"{MOUNTS_GUEST}/{mount.name}"


def check_mounts(mounts: tuple[HostMount, ...]) -> tuple[HostMount, ...]:
    """`mounts` when their names are usable and unique and their folders absolute.

    Raises:
        ValueError: a name is not 1-64 letters, digits, `-` and `_`, or comes twice; or a host
            folder is not an absolute path.
    """
    names = [m.name for m in mounts]
    for mount in mounts:
        if not MOUNT_NAME.fullmatch(mount.name) or names.count(mount.name) > 1:
            raise ValueError(
                "WorkspacePaths.mounts: expected unique names of 1-64 letters, digits, - and _, "
                f"got {mount.name!r}; check the names before building the plan"
            )
        if not mount.host.is_absolute():
            raise ValueError(
                f"WorkspacePaths.mounts[{mount.name!r}].host: expected an absolute folder, got "
                f"{str(mount.host)!r}; resolve the path before building the plan"
            )
    return mounts


@dataclass(frozen=True, slots=True)
class MountsBefore:
    """The writable operator mounts' files before a run (regular files, links not followed).

    Attributes:
        files: Mount name → its files by path, with size and mtime.
        held: Mount name → what it occupies (where its watchdog budget starts from).
    """

    files: dict[str, Snapshot]
    held: dict[str, DiskUsage]


def writable(mounts: Iterable[HostMount]) -> tuple[HostMount, ...]:
    """The read-write mounts among `mounts`."""
    return tuple(m for m in mounts if not m.read_only)


def mounts_before(mounts: Iterable[HostMount]) -> MountsBefore:
    """Walk each writable mount by descriptor (blocking: call it in a thread)."""
    files: dict[str, Snapshot] = {}
    held: dict[str, DiskUsage] = {}
    for mount in writable(mounts):
        found = scan(mount.host)
        files[mount.name], held[mount.name] = found.files, found.usage
    return MountsBefore(files, held)


def mount_budgets(
    mounts: Iterable[HostMount], before: MountsBefore, limits: Limits
) -> list[tuple[Path, int, int]]:
    """(host folder, bytes, inodes) that a watchdog holds each writable mount to: the workspace
    budget per folder, lifted to what the folder already holds (it may shrink, not grow)."""
    budgets: list[tuple[Path, int, int]] = []
    for mount in writable(mounts):
        held = before.held.get(mount.name) or disk_usage(mount.host)
        budgets.append(
            (
                mount.host,
                max(limits.workspace_bytes, held.bytes),
                max(limits.workspace_files, held.files),
            )
        )
    return budgets


@dataclass(frozen=True, slots=True)
class MountChanges:
    """What a run did to the writable operator mounts.

    Attributes:
        touched: Files created or changed, as guest paths `/mnt/NAME/…` (mount by mount,
            sorted within each).
        images: The images among them, with those paths.
        over: Allocated bytes of the first mount past its budget (`mount_budgets`), if any.
    """

    touched: tuple[str, ...] = ()
    images: tuple[Image, ...] = ()
    over: int | None = None


def mount_changes(
    mounts: Iterable[HostMount], before: MountsBefore, limits: Limits, *, images_so_far: int = 0
) -> MountChanges:
    """What a run wrote in the writable mounts, and the images among them (at most
    `MAX_IMAGES` in all, counting the `images_so_far` of the workspace), as the pyodide engine
    reports them; and whether one ended past its budget (a run shorter than the watchdog's
    first look). Walked by descriptor, links not followed (blocking: call it in a thread)."""
    touched: list[str] = []
    images: list[Image] = []
    over: int | None = None
    mounts = writable(mounts)
    budgets = mount_budgets(mounts, before, limits)
    for mount, (_folder, max_bytes, max_files) in zip(mounts, budgets, strict=True):
        guest = mount_guest(mount)
        found = scan(mount.host)
        written = changed(before.files.get(mount.name, {}), found.files)
        touched += [f"{guest}/{rel}" for rel in written]
        room = MAX_IMAGES - images_so_far - len(images)
        if room > 0:
            pictures = images_among(mount.host, written)[:room]
            images += [Image(f"{guest}/{i.path}", i.mime_type, i.data) for i in pictures]
        usage = found.usage
        if over is None and (
            usage.bytes > max_bytes or usage.files > max_files or not usage.complete
        ):
            over = usage.bytes
    return MountChanges(tuple(touched), tuple(images), over)


def folder_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder `path` (links not followed), None when it is none: a
    guest granted a mount folder keeps the folder it was given, so one prepared earlier
    serves only while the path still names that folder."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            return st.st_dev, st.st_ino
    return None
