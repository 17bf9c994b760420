"""Host-side reads of a session workspace that never follow a link the guest made."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._types import Image

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
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(root, flags_dir)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags_dir, dir_fd=fd)
            os.close(fd)
            fd = nxt
        final = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError:
        os.close(fd)
        return None
    os.close(fd)
    return final


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


def total_bytes(snap: Snapshot) -> int:
    """Bytes held by the files of a snapshot."""
    return sum(size for size, _ in snap.values())
