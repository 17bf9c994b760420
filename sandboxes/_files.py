"""Host-side reads of a session workspace that never follow a link the guest made."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from ._types import Image, WorkspacePaths

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

Snapshot = dict[str, tuple[int, int]]
"""Workspace-relative path → (size in bytes, mtime in ns), regular files only."""


def snapshot(root: Path) -> Snapshot:
    """Every regular file under `root` with its size and mtime; links are not followed."""
    found: Snapshot = {}
    stack = [root]
    seen = 0
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > MAX_SCANNED_ENTRIES:
                return found
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
            elif stat.S_ISREG(st.st_mode):
                rel = Path(entry.path).relative_to(root).as_posix()
                found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def changed(before: Snapshot, after: Snapshot) -> tuple[str, ...]:
    """Paths created or modified between two snapshots, sorted."""
    return tuple(sorted(p for p, sig in after.items() if before.get(p) != sig))


def read_regular_file(root: Path, rel: str, *, max_bytes: int) -> bytes | None:
    """The bytes of `root/rel` if it is a regular file reached without any symlink, else None."""
    fd = _open_beneath(root, rel)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        return data if len(data) <= max_bytes else None
    finally:
        os.close(fd)


def _open_beneath(root: Path, rel: str) -> int | None:
    """Open `rel` component by component under `root` with O_NOFOLLOW on every step."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    fd = folder_beneath(root, parts[:-1])
    if fd is None:
        return None
    try:
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def folder_beneath(root: Path, parts: list[str], *, create: bool = False) -> int | None:
    """An fd of the folder `root/parts…`, reached with O_NOFOLLOW on every step (`create`:
    missing folders are made on the way, 0755), or None when a step is not a real folder."""
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(root, flags_dir)
    except OSError:
        return None
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            nxt = os.open(part, flags_dir, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        return None
    return fd


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
    if dropped:
        logger.warning(
            "unlinked %d hard link(s) to files outside the workspace %s before a run: %s",
            len(dropped),
            workspace.files.parent,
            ", ".join(dropped[:10]),
        )
    return dropped


def _drop_foreign(root: Path, prefix: str) -> tuple[str, ...]:
    names: dict[tuple[int, int], list[str]] = {}
    counts: dict[tuple[int, int], int] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(root / rel if rel else root))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
            elif st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                names.setdefault(key, []).append(path)
                counts[key] = st.st_nlink
    return tuple(
        sorted(
            prefix + path
            for key, paths in names.items()
            if len(paths) < counts[key]
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
