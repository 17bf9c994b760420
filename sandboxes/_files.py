"""The one host-side file layer: every read, walk and removal of a session workspace (and of an
operator mount) that the engines and the runner make on the host goes through here.

Rules, the same on every path:

- Every path is opened component by component from its root with `openat` and `O_NOFOLLOW`
  (no symbolic link is ever followed, no path string is ever longer than one name, so there is
  no `PATH_MAX` limit), `O_NONBLOCK` (opening a FIFO or a device never waits) and `O_CLOEXEC`.
- Only regular files (checked with `fstat` on the open descriptor) are read, never more than
  the caller's byte bound; folders are listed by descriptor. A FIFO, socket, device or link is
  refused with `FileRefused`, at once.
- Disk use is what the files occupy: allocated blocks (`st_blocks` x 512, so a sparse file counts
  what it holds, not its length) and inodes (every entry: files, folders, links, others; a file
  with several names once), walked by descriptor to at most `MAX_WALK_DEPTH` folders deep.
- Removal is by descriptor too (deep trees included).
- Slow host I/O of the runner runs on `HostIO`, a small executor of its own with a bound per
  grant, off the default thread pool that the gate and the engines use.

FileRefused (SandboxError)   a path that is not a regular file (or folder) inside its root
HostIOBusy (SandboxError)    the grant already has `per_grant` host file operations in flight
HostIOTimeout (SandboxError) a host file operation did not finish within its time bound
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ._errors import SandboxError
from ._types import Image, Limits, WorkspacePaths

logger = logging.getLogger("sandgate.files")

IMAGE_MIME_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGES = 16
MAX_SCANNED_ENTRIES = 100_000
"""Most regular files a `snapshot` lists by path (disk use is counted past it)."""
MAX_WALK_DEPTH = 256
"""Most folder levels a walk descends (one open descriptor per level). A workspace nested
deeper counts as over its budget: `DiskUsage.complete` is False."""
BLOCK_BYTES = 512
"""The unit of `st_blocks`."""
READ_CHUNK_BYTES = 1 << 20

OPEN_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
"""How a file is opened for reading: never through a link, never waiting (FIFO, device)."""
OPEN_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""How a folder is opened: only a real folder, never through a link."""

Snapshot = dict[str, tuple[int, int]]
"""Workspace-relative path → (size in bytes, mtime in ns), regular files only."""

T = TypeVar("T")


class FileRefused(SandboxError, ValueError):
    """A host path that sandgate will not read: not a regular file (or folder) reached without
    links inside its root, missing, or too large.

    Attributes:
        path: The path as given (relative to its root).
        expected: What would have been accepted.
        got: What was found (`a FIFO (named pipe)`, `a symbolic link`, `no such file`…).
    """

    def __init__(self, path: str, expected: str, got: str) -> None:
        super().__init__(f"{path!r}: expected {expected}, got {got}")
        self.path = path
        self.expected = expected
        self.got = got


class HostIOBusy(SandboxError):
    """The grant already has its share of host file operations in flight (some may be stuck on
    a slow disk); other grants are not affected.

    Attributes:
        retry_after_s: A suggested wait before retrying.
    """

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HostIOTimeout(SandboxError):
    """A host file operation did not finish within its time bound (its thread still counts
    against the grant until it does)."""


def kind_of(mode: int) -> str:
    """What a file of `mode` is, in words (`a FIFO (named pipe)`, `a socket`…)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a special file"


def split_rel(rel: str) -> list[str]:
    """The parts of a root-relative path; `[]` for the root itself. The one rule for every
    path a client names inside a folder (workspace files, mount listings, images, resources).

    Raises:
        FileRefused: `rel` is absolute (`/…`, `\\…`, `C:…`), has a NUL or a backslash, or leaves
            the folder with `..`.
    """
    if "\0" in rel:
        raise FileRefused(rel, "a path without NUL characters", "a path with a NUL")
    if rel.startswith(("/", "\\", "~")) or (len(rel) > 1 and rel[1] == ":"):
        raise FileRefused(rel, "a path relative to its folder", "an absolute path")
    if "\\" in rel:
        raise FileRefused(rel, "a POSIX path with '/' separators", "a path with a backslash")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FileRefused(rel, "a path inside its folder", "a path that leaves it with '..'")
    return parts


def _refusal(rel: str, exc: OSError, fd: int, name: str, what: str) -> FileRefused:
    """Why opening `name` under `fd` failed, in words."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        return FileRefused(rel, what, kind_of(st.st_mode))
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return FileRefused(rel, what, "a symbolic link")
    if exc.errno == errno.ENOTDIR:
        return FileRefused(rel, what, "a path through something that is not a folder")
    if exc.errno == errno.ENOENT:
        return FileRefused(rel, what, "no such file or folder")
    return FileRefused(rel, what, f"a path that cannot be opened ({exc.strerror or exc})")


def open_folder(root: Path | int, parts: list[str], *, rel: str = "", create: bool = False) -> int:
    """A descriptor of the folder `root/parts…`, each step opened with `OPEN_DIR_FLAGS`
    (`create`: missing folders are made on the way, 0755). `root` may be a descriptor (it is
    not closed). The caller closes the result.

    Raises:
        FileRefused: a step is missing, a link or not a folder.
    """
    shown = rel or "/".join(parts)
    try:
        fd = os.open(root, OPEN_DIR_FLAGS) if not isinstance(root, int) else os.dup(root)
    except OSError as exc:
        raise FileRefused(shown, "an existing folder", f"no usable root ({exc.strerror})") from None
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                nxt = os.open(part, OPEN_DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(shown, exc, fd, part, "a folder reached without links") from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(root: Path | int, rel: str) -> int:
    """A read-only descriptor of the regular file `root/rel` (checked with `fstat`), opened
    without following links and without waiting. The caller closes it.

    Raises:
        FileRefused: `rel` leaves the root, goes through a link, or is not a regular file.
    """
    parts = split_rel(rel)
    if not parts:
        raise FileRefused(rel, "a regular file", "the folder itself")
    folder = open_folder(root, parts[:-1], rel=rel)
    try:
        try:
            fd = os.open(parts[-1], OPEN_FILE_FLAGS, dir_fd=folder)
        except OSError as exc:
            raise _refusal(rel, exc, folder, parts[-1], "a regular file") from None
    finally:
        os.close(folder)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FileRefused(rel, "a regular file", kind_of(mode))
    return fd


def read_open(fd: int, *, max_bytes: int, rel: str = "") -> bytes:
    """At most `max_bytes` bytes of the open regular file `fd` (its whole content).

    Raises:
        FileRefused: the file holds more than `max_bytes` bytes.
    """
    too_big = FileRefused(rel, f"a file of at most {max_bytes} bytes", "a larger file")
    if os.fstat(fd).st_size > max_bytes:
        raise too_big
    chunks: list[bytes] = []
    remaining = max_bytes + 1
    while remaining > 0:
        chunk = os.read(fd, min(remaining, READ_CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise too_big
    return data


def read_file(root: Path | int, rel: str, *, max_bytes: int) -> bytes:
    """The bytes of the regular file `root/rel`, at most `max_bytes` of them.

    Raises:
        FileRefused: not a regular file reached without links inside `root`, or too large.
    """
    fd = open_file(root, rel)
    try:
        return read_open(fd, max_bytes=max_bytes, rel=rel)
    finally:
        os.close(fd)


def read_regular_file(root: Path, rel: str, *, max_bytes: int) -> bytes | None:
    """The bytes of `root/rel` if it is a regular file reached without any symlink, else None."""
    try:
        return read_file(root, rel, max_bytes=max_bytes)
    except (FileRefused, OSError):
        return None


# -- walks by descriptor ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """What a folder's contents occupy on the host disk (the folder itself not counted).

    Attributes:
        bytes: Allocated bytes (`st_blocks` x 512) of every entry: files, folders, links and
            others; a sparse file counts the blocks it holds, a hard-linked file once.
        files: Inodes: every entry of any kind (a file with several names once).
        complete: False when part of the tree could not be walked (nested deeper than
            `MAX_WALK_DEPTH`, or a folder that cannot be opened); budgets treat that as over.
    """

    bytes: int = 0
    files: int = 0
    complete: bool = True

    def __add__(self, other: DiskUsage) -> DiskUsage:
        return DiskUsage(
            self.bytes + other.bytes, self.files + other.files, self.complete and other.complete
        )

    def over(self, limits: Limits) -> bool:
        """Whether this passes the workspace budget of `limits` (bytes or files)."""
        return (
            not self.complete
            or self.bytes > limits.workspace_bytes
            or self.files > limits.workspace_files
        )

    def describe(self) -> str:
        """`N bytes in M files` (and that part could not be counted, when so)."""
        text = f"{self.bytes} bytes in {self.files} files"
        if not self.complete:
            text += f" (and folders nested deeper than {MAX_WALK_DEPTH} levels)"
        return text


@dataclass(frozen=True, slots=True)
class Scan:
    """One walk of a folder: its regular files by path (`files`) and its disk use."""

    files: Snapshot
    usage: DiskUsage


class Walk:
    """Every entry under a folder, walked by descriptor, depth first: `(path, stat)` pairs
    (links not followed, only folders opened, at most `MAX_WALK_DEPTH` levels). `complete`
    turns False when a folder could not be entered."""

    def __init__(self, root: Path | int) -> None:
        self.root = root
        self.complete = True

    def __iter__(self) -> Iterator[tuple[str, os.stat_result]]:
        for _fd, name, prefix, st in self.at():
            yield prefix + name, st

    def at(self) -> Iterator[tuple[int, str, str, os.stat_result]]:
        """`(folder descriptor, name, the folder's path prefix, stat)` of every entry; the
        descriptor is valid until the next item is asked for."""
        root = self.root
        try:
            fd: int | None = (
                os.open(root, OPEN_DIR_FLAGS) if not isinstance(root, int) else os.dup(root)
            )
        except OSError:
            return
        prefix = ""
        stack: list[tuple[int, str, list[str]]] = []  # (descriptor, path prefix, to enter)
        try:
            while fd is not None:
                subfolders: list[str] = []
                try:
                    names = os.listdir(fd)
                except OSError:
                    self.complete, names = False, []
                stack.append((fd, prefix, subfolders))
                here, fd = fd, None
                for name in names:
                    try:
                        st = os.stat(name, dir_fd=here, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        subfolders.append(name)
                    yield here, name, prefix, st
                while stack and fd is None:
                    here, at, pending = stack[-1]
                    if not pending:
                        os.close(here)
                        stack.pop()
                        continue
                    name = pending.pop()
                    if len(stack) >= MAX_WALK_DEPTH:
                        self.complete = False
                        continue
                    try:
                        fd = os.open(name, OPEN_DIR_FLAGS, dir_fd=here)
                    except OSError:
                        self.complete = False
                        continue
                    prefix = f"{at}{name}/"
        finally:
            if fd is not None:
                os.close(fd)
            for here, _at, _pending in stack:
                os.close(here)


def scan(root: Path | int, *, paths: bool = True, stop_after_files: int | None = None) -> Scan:
    """Walk `root` by descriptor: its regular files (with `paths`, at most
    `MAX_SCANNED_ENTRIES` of them) and what everything under it occupies. Links are never
    followed; nothing but folders is opened. A missing or unopenable root is empty.

    `stop_after_files`: stop once more entries than this were counted (the usage is then at
    least that, known to be over such a budget).
    """
    tally = _Tally(paths)
    walk = Walk(root)
    entries = iter(walk)
    try:
        for rel, st in entries:
            tally.add(rel, st)
            if stop_after_files is not None and tally.files > stop_after_files:
                break
    finally:
        close = getattr(entries, "close", None)
        if close is not None:
            close()
    return tally.scan(walk.complete)


class _Tally:
    """What `scan` counts, entry by entry: a file with several names counts once."""

    def __init__(self, paths: bool) -> None:
        self.paths = paths
        self.found: Snapshot = {}
        self.total = 0
        self.files = 0
        self.linked: set[tuple[int, int]] = set()

    def add(self, rel: str, st: os.stat_result) -> None:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in self.linked:
                return
            self.linked.add(key)
        self.files += 1
        self.total += st.st_blocks * BLOCK_BYTES
        if self.paths and stat.S_ISREG(st.st_mode) and len(self.found) < MAX_SCANNED_ENTRIES:
            self.found[rel] = (st.st_size, st.st_mtime_ns)

    def scan(self, complete: bool) -> Scan:
        return Scan(self.found, DiskUsage(self.total, self.files, complete))


def snapshot(root: Path) -> Snapshot:
    """Every regular file under `root` with its size and mtime; links are not followed."""
    return scan(root).files


def disk_usage(root: Path | int, *, stop_after_files: int | None = None) -> DiskUsage:
    """What everything under `root` occupies (allocated bytes, inodes), walked by descriptor."""
    return scan(root, paths=False, stop_after_files=stop_after_files).usage


def empty_folder(root: Path | int) -> DiskUsage:
    """Remove everything inside `root` (kept itself), by descriptor, however deep; links are
    removed, never followed. Returns what could not be removed (zero when all went)."""
    try:
        top = os.open(root, OPEN_DIR_FLAGS) if not isinstance(root, int) else os.dup(root)
    except OSError:
        return DiskUsage()
    try:
        for _ in range(1 << 16):  # each pass removes a subtree up to MAX_WALK_DEPTH deep
            if not _remove_pass(top):
                break
        return disk_usage(top)
    finally:
        os.close(top)


def _remove_pass(top: int) -> bool:
    """Remove what lies under `top` down to `MAX_WALK_DEPTH`; folders deeper are first moved
    up into `top` under a new name. True when something was moved up (another pass is due)."""
    moved = False
    # Each frame: (descriptor, its name in the parent, sub-folders still to empty).
    stack: list[tuple[int, str, list[str]]] = []
    fd: int | None = os.dup(top)
    name = ""
    try:
        while fd is not None:
            subfolders: list[str] = []
            try:
                names = os.listdir(fd)
            except OSError:
                names = []
            for entry in names:
                try:
                    st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    subfolders.append(entry)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry, dir_fd=fd)
            stack.append((fd, name, subfolders))
            fd = None
            while stack and fd is None:
                here, _mine, pending = stack[-1]
                if not pending:
                    os.close(here)
                    _, gone, _ = stack.pop()
                    if stack:
                        with contextlib.suppress(OSError):
                            os.rmdir(gone, dir_fd=stack[-1][0])
                    continue
                name = pending.pop()
                if len(stack) >= MAX_WALK_DEPTH:
                    fresh = f".sandgate-deep-{secrets.token_hex(8)}"
                    with contextlib.suppress(OSError):
                        os.rename(name, fresh, src_dir_fd=here, dst_dir_fd=top)
                        moved = True
                    continue
                with contextlib.suppress(OSError):
                    fd = os.open(name, OPEN_DIR_FLAGS, dir_fd=here)
    finally:
        if fd is not None:
            os.close(fd)
        for here, _mine, _pending in stack:
            os.close(here)
    return moved


def remove_tree(path: Path) -> None:
    """Remove the folder `path` and everything in it, by descriptor however deep (a link at
    `path` itself is removed, not followed). A missing `path` is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError:
        logger.warning("could not remove %s", path, exc_info=True)
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    left = empty_folder(path)
    try:
        os.rmdir(path)
    except OSError as exc:
        logger.warning("could not remove %s (%s left): %s", path, left.describe(), exc)


def changed(before: Snapshot, after: Snapshot) -> tuple[str, ...]:
    """Paths created or modified between two snapshots, sorted."""
    return tuple(sorted(p for p, sig in after.items() if before.get(p) != sig))


def folder_beneath(root: Path, parts: list[str], *, create: bool = False) -> int | None:
    """An fd of the folder `root/parts…` (see `open_folder`), or None when a step is not a
    real folder."""
    try:
        return open_folder(root, parts, create=create)
    except (FileRefused, OSError):
        return None


def images_among(root: Path, paths: tuple[str, ...]) -> tuple[Image, ...]:
    """The images among `paths` (by suffix), read safely, at most `MAX_IMAGES`."""
    images: list[Image] = []
    for rel in paths:
        mime = IMAGE_MIME_TYPES.get(Path(rel).suffix.lower())
        if mime is None:
            continue
        data = read_regular_file(root, rel, max_bytes=MAX_IMAGE_BYTES)
        if data is not None:
            images.append(Image(path=rel, mime_type=mime, data=data))
        if len(images) >= MAX_IMAGES:
            break
    return tuple(images)


def has_entries(folder: str | Path) -> bool:
    """Whether `folder` holds any entry: False when it does not exist, True when it cannot be
    read (callers treat an unknown folder as a full one)."""
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def total_bytes(snap: Snapshot) -> int:
    """Bytes held by the files of a snapshot."""
    return sum(size for size, _ in snap.values())


def scan_dropping_foreign_links(workspace: WorkspacePaths) -> tuple[Scan, tuple[str, ...]]:
    """`drop_foreign_links(workspace)`, then `scan(workspace.files)`, with one walk of the
    files folder where the two took two: the walk that finds the links takes the scan too, and
    the folder is walked again only when a link was dropped from it."""
    tally = _Tally(True)
    walk = Walk(workspace.files)
    multiple = _Multiple()
    for rel, st in walk:
        tally.add(rel, st)
        multiple.add(rel, st)
    in_files = multiple.drop(workspace.files, "")
    dropped = in_files + _drop_foreign(workspace.site, "site/")
    report_dropped_links(workspace, dropped)
    found = scan(workspace.files) if in_files else tally.scan(walk.complete)
    return found, dropped


def drop_foreign_links(workspace: WorkspacePaths) -> tuple[str, ...]:
    """Unlink the names in a workspace of every file that also has a name outside it.

    A hard link is the one link a sandbox follows without knowing it: a host file linked into
    a workspace from elsewhere (no guest can make one, it sees nothing outside) would be read
    and written through, and the container engine would hand it to the sandbox user. Engines
    call this before a run; the file outside is left as it is, and links among a folder's own
    files are kept. Returns the paths unlinked (those of the site folder under `site/`).
    """
    dropped = _drop_foreign(workspace.files, "")
    dropped += _drop_foreign(workspace.site, "site/")
    report_dropped_links(workspace, dropped)
    return dropped


def report_dropped_links(workspace: WorkspacePaths, dropped: tuple[str, ...]) -> None:
    """Log the links `drop_foreign_links` unlinked from `workspace`, if any (also for links a
    worker process dropped and named in its answer: its own log goes nowhere)."""
    if dropped:
        logger.warning(
            "unlinked %d hard link(s) to files outside the workspace %s before a run: %s",
            len(dropped),
            workspace.files.parent,
            ", ".join(dropped[:10]),
        )


def _drop_foreign(root: Path, prefix: str) -> tuple[str, ...]:
    multiple = _Multiple()
    for path, st in Walk(root):
        multiple.add(path, st)
    return multiple.drop(root, prefix)


class _Multiple:
    """The names of a walk's files that have more than one, to drop those with a name outside
    the walked folder (more names in all than the walk found)."""

    def __init__(self) -> None:
        self.names: dict[tuple[int, int], list[str]] = {}
        self.counts: dict[tuple[int, int], int] = {}

    def add(self, path: str, st: os.stat_result) -> None:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            self.names.setdefault(key, []).append(path)
            self.counts[key] = st.st_nlink

    def drop(self, root: Path, prefix: str) -> tuple[str, ...]:
        """Unlink the names of files with a name outside `root`; their paths, `prefix`ed."""
        return tuple(
            sorted(
                prefix + path
                for key, paths in self.names.items()
                if len(paths) < self.counts[key]
                for path in paths
                if _unlink_beneath(root, path, key)
            )
        )


def _unlink_beneath(root: Path, rel: str, key: tuple[int, int]) -> bool:
    parts = rel.split("/")
    fd = folder_beneath(root, parts[:-1])
    if fd is None:
        return False
    try:
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != key:
            return False
        os.unlink(parts[-1], dir_fd=fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


# -- host I/O off the default thread pool -----------------------------------------------------

DEFAULT_HOST_IO_THREADS = 16
"""Threads of the host file executor (made as needed)."""
DEFAULT_HOST_IO_PER_GRANT = 4
"""Host file operations one grant may have in flight at once (stuck ones included)."""
DEFAULT_HOST_IO_TIMEOUT_S = 10.0
"""Seconds a caller waits for a place among its grant's operations, then for the operation."""


class _DaemonThreads:
    """A small executor whose threads never hold the process open at exit (a read stuck on a
    dead disk must not stop the server from ending)."""

    def __init__(self, threads: int) -> None:
        self._max = threads
        self._queue: queue.SimpleQueue[tuple[Future[object], Callable[[], object]]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, work: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, work))  # type: ignore[arg-type]
        with self._lock:
            start = self._idle == 0 and self._threads < self._max
            if start:
                self._threads += 1
        if start:
            threading.Thread(target=self._serve, name="sandgate-host-io", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            future, work = self._queue.get()
            with self._lock:
                self._idle -= 1
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to the awaiting caller
                future.set_exception(exc)


class HostIO:
    """Runs blocking host file operations (reads for resources and mount tools, budget walks)
    on a small executor of their own, off the default thread pool that the gate and the engines
    use. Each grant has at most `per_grant` operations in flight: one whose thread is stuck
    (a hung disk) keeps counting against its grant until it returns, never against another.

    Args:
        threads: Threads of the executor.
        per_grant: Operations in flight per grant.
        timeout_s: Seconds a call waits for a place, then for its operation.
    """

    def __init__(
        self,
        *,
        threads: int = DEFAULT_HOST_IO_THREADS,
        per_grant: int = DEFAULT_HOST_IO_PER_GRANT,
        timeout_s: float = DEFAULT_HOST_IO_TIMEOUT_S,
    ) -> None:
        self.per_grant = per_grant
        self.timeout_s = timeout_s
        self._pool = _DaemonThreads(threads)
        self._places: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def in_flight(self, grant: str) -> int:
        """Operations of `grant` running or queued now (stuck ones included)."""
        with self._lock:
            return self._in_flight.get(grant, 0)

    def _place(self, grant: str) -> tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        held = self._places.get(grant)
        if held is None or held[0] is not loop or loop.is_closed():
            held = (loop, asyncio.Semaphore(self.per_grant))
            self._places[grant] = held
        return held

    async def call(self, grant: str, work: Callable[[], T]) -> T:
        """`work()` on the host I/O executor, as one of `grant`'s operations.

        Raises:
            HostIOBusy: `grant` still had `per_grant` operations in flight after `timeout_s`.
            HostIOTimeout: the operation did not finish within `timeout_s`.
        """
        loop, place = self._place(grant)
        try:
            await asyncio.wait_for(place.acquire(), self.timeout_s)
        except TimeoutError:
            raise HostIOBusy(
                f"this client already has {self.per_grant} host file operations in flight "
                f"(a file read may be stuck on a slow disk); retry after {self.timeout_s:g} s",
                retry_after_s=self.timeout_s,
            ) from None
        with self._lock:
            self._in_flight[grant] = self._in_flight.get(grant, 0) + 1

        def finished(_: Future[T]) -> None:
            with self._lock:
                self._in_flight[grant] -= 1
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(place.release)

        future = self._pool.submit(work)
        future.add_done_callback(finished)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            raise HostIOTimeout(
                f"a host file operation took longer than {self.timeout_s:g} s and was given up "
                "(the disk may be slow); retry later"
            ) from None


HOST_IO = HostIO()
"""The process's host file executor (the runner's reads and budget walks)."""
