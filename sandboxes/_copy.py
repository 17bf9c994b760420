"""Copy a folder the code could write (a session's workspace) into one the server owns, and
back: by descriptor, never following a link, holes kept, within a budget of allocated bytes
and inodes. Snapshots and forks copy a session's files with it."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ._errors import SandboxError
from ._files import BLOCK_BYTES, OPEN_DIR_FLAGS, OPEN_FILE_FLAGS, Walk

CHUNK_BYTES = 1 << 20
"""Bytes copied per system call."""


class CopyOverBudget(SandboxError):
    """The folder holds more than the copy may take (allocated bytes or entries); the partial
    copy is the caller's to remove.

    Attributes:
        bytes: Allocated bytes counted when the copy stopped.
        files: Entries counted when the copy stopped.
    """

    def __init__(self, bytes_: int, files: int, max_bytes: int, max_files: int) -> None:
        super().__init__(
            f"the folder holds more than {max_bytes} bytes or {max_files} files "
            f"(at least {bytes_} bytes in {files} files counted before the copy stopped)"
        )
        self.bytes = bytes_
        self.files = files


@dataclass(frozen=True, slots=True)
class Copied:
    """What a copy took.

    Attributes:
        bytes: Allocated bytes of the copies (holes not counted), folders included.
        files: Entries copied (files and folders).
        skipped: Paths left out: links, devices, pipes and sockets (never copied), and
            folders nested deeper than the walk goes.
    """

    bytes: int
    files: int
    skipped: tuple[str, ...]


def copy_tree(source: Path, target: Path, *, max_bytes: int, max_files: int) -> Copied:
    """Copy the regular files and folders under `source` into the existing folder `target`
    (which should be empty): walked by descriptor, links and special files skipped (named in
    `skipped`), permission bits kept (at most rwx for the owner, group and others), sparse
    files copied sparse.

    Raises:
        CopyOverBudget: the copies would occupy more than `max_bytes` (allocated) or
            `max_files` entries; what was copied stays in `target`.
        OSError: `source` or `target` cannot be used.
    """
    total = files = 0
    skipped: list[str] = []
    top = os.open(target, OPEN_DIR_FLAGS)
    folders: dict[str, int] = {"": top}
    walk = Walk(source)
    try:
        for here, name, prefix, st in walk.at():
            rel = prefix + name
            parent = folders.get(prefix)
            if parent is None:  # its folder was skipped
                continue
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=parent)
                made = os.open(name, OPEN_DIR_FLAGS, dir_fd=parent)
                folders[rel + "/"] = made
                os.fchmod(made, stat.S_IMODE(st.st_mode) & 0o777 | 0o700)
                total += os.fstat(made).st_blocks * BLOCK_BYTES
            elif stat.S_ISREG(st.st_mode):
                total += _copy_file(here, name, parent, st, room=max_bytes - total)
            else:
                skipped.append(rel)
                continue
            files += 1
            if total > max_bytes or files > max_files:
                raise CopyOverBudget(total, files, max_bytes, max_files)
        if not walk.complete:
            skipped.append("(folders nested too deep to walk)")
    finally:
        for fd in folders.values():
            os.close(fd)
    return Copied(total, files, tuple(skipped))


def _copy_file(src_dir: int, name: str, dst_dir: int, st: os.stat_result, *, room: int) -> int:
    """Copy one regular file, data segments only; returns the copy's allocated bytes. Stops
    early (returning more than `room`) once the copy outgrows `room`."""
    try:
        src = os.open(name, OPEN_FILE_FLAGS, dir_fd=src_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):  # gone or replaced by a link meanwhile
            return 0
        raise
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            return 0
        dst = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            stat.S_IMODE(st.st_mode) & 0o777 | 0o600,
            dir_fd=dst_dir,
        )
        try:
            size = os.fstat(src).st_size
            offset = 0
            while offset < size:
                try:
                    offset = os.lseek(src, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole is left
                        break
                    raise
                end = os.lseek(src, offset, os.SEEK_HOLE)
                offset = _copy_range(src, dst, offset, end)
                if os.fstat(dst).st_blocks * BLOCK_BYTES > room:
                    break
            os.ftruncate(dst, size)
            return int(os.fstat(dst).st_blocks * BLOCK_BYTES)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_range(src: int, dst: int, start: int, end: int) -> int:
    """Copy bytes [start, end) of `src` to the same offsets of `dst`; returns where it
    stopped (`end`, or earlier when the file shrank)."""
    at = start
    while at < end:
        count = min(CHUNK_BYTES, end - at)
        try:
            done = os.copy_file_range(src, dst, count, at, at)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            data = os.pread(src, count, at)
            done = os.pwrite(dst, data, at) if data else 0
        if done <= 0:
            return at
        at += done
    return at


def link_tree(source: Path, target: Path) -> None:
    """Copy a folder the server wrote itself (a saved interpreter, a checkpoint: regular files
    and folders), hard-linking each file where the file system allows: such files are written
    once and never changed in place, so a link is as good as a copy. Links and other entries
    are skipped."""
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    for entry in os.scandir(source):
        dest = target / entry.name
        if entry.is_dir(follow_symlinks=False):
            link_tree(Path(entry.path), dest)
        elif entry.is_file(follow_symlinks=False):
            try:
                os.link(entry.path, dest)
            except OSError:
                shutil.copyfile(entry.path, dest, follow_symlinks=False)
