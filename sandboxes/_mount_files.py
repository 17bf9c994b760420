"""Host-side reads of mount points for the tools and resources that read them without running
code (listings, images, `resources/list`): list a folder, read an image, no escapes. Engine
neutral: the folders are the session workspace and the operator's mounts, whatever engine runs
the code.

Each path is opened component by component from the mount root by the host file layer
(`sandboxes._files`: `O_NOFOLLOW | O_NONBLOCK`, regular files only), so `..`, absolute paths,
symbolic links (including ones the guest planted), FIFOs and devices never lead anywhere.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._errors import SandboxError
from ._files import (
    IMAGE_MIME_TYPES,
    MAX_IMAGE_BYTES,
    FileRefused,
    open_file,
    open_folder,
    read_open,
    split_rel,
)
from ._types import Image

EntryKind = Literal["file", "directory", "symlink", "other"]
MAX_LISTED_ENTRIES = 10_000
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


class MountPathRefused(SandboxError, ValueError):
    """A path argument of a mount tool was refused.

    Attributes:
        argument: The tool argument (`imagePath`, `path`).
        expected: What would have been accepted.
        got: The value that came.
    """

    def __init__(self, argument: str, expected: str, got: str) -> None:
        super().__init__(f"{argument}: expected {expected}, got {got!r}")
        self.argument = argument
        self.expected = expected
        self.got = got


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a mounted folder. Links are reported as links, never followed.

    Attributes:
        name: The entry's name.
        path: Its path relative to the mount root.
        kind: `file`, `directory`, `symlink` or `other`.
        size_bytes: Size of a file; 0 for the rest.
    """

    name: str
    path: str
    kind: EntryKind
    size_bytes: int


def _parts(argument: str, rel: str, *, allow_empty: bool) -> list[str]:
    try:
        parts = split_rel(rel)
    except FileRefused as exc:
        raise MountPathRefused(argument, f"{exc.expected} (relative to the mount)", rel) from None
    if not parts and not allow_empty:
        raise MountPathRefused(argument, "a path relative to the mount, not the mount itself", rel)
    return parts


def _open_dir(root: Path, parts: list[str], argument: str, rel: str) -> int:
    if not parts:
        try:
            return open_folder(root, [])
        except FileRefused:
            raise MountPathRefused("mount", "an existing mount folder", str(root)) from None
    try:
        return open_folder(root, parts, rel=rel)
    except FileRefused as exc:
        raise MountPathRefused(argument, _expected(exc, "folder"), rel) from None


def _expected(exc: FileRefused, what: str) -> str:
    """What a mount tool accepts, in words, given why the host file layer refused a path."""
    if exc.got == "a symbolic link":
        return f"a {what} reached without symbolic links"
    if exc.got.startswith("no such"):
        return f"an existing {what} inside the mount"
    if "not a folder" in exc.got:
        return f"a {what} (a path through folders only)"
    return f"a regular file or folder inside the mount (not {exc.got})"


def list_mounted_directory(root: Path, rel: str = "") -> list[Entry]:
    """The entries of `root/rel`, sorted by name (at most `MAX_LISTED_ENTRIES`).

    Raises:
        MountPathRefused: `rel` is absolute, has `..`, goes through a link or is no folder.
    """
    parts = _parts("path", rel, allow_empty=True)
    fd = _open_dir(root, parts, "path", rel)
    prefix = "/".join(parts)
    entries: list[Entry] = []
    try:
        with os.scandir(fd) as found:
            for item in found:
                if len(entries) >= MAX_LISTED_ENTRIES:
                    break
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                kind: EntryKind
                if stat.S_ISLNK(st.st_mode):
                    kind = "symlink"
                elif stat.S_ISDIR(st.st_mode):
                    kind = "directory"
                elif stat.S_ISREG(st.st_mode):
                    kind = "file"
                else:
                    kind = "other"
                path = f"{prefix}/{item.name}" if prefix else item.name
                size = st.st_size if kind == "file" else 0
                entries.append(Entry(name=item.name, path=path, kind=kind, size_bytes=size))
    finally:
        os.close(fd)
    return sorted(entries, key=lambda e: e.name)


def read_image(root: Path, rel: str) -> Image:
    """The image at `root/rel`, checked by suffix and by content.

    Raises:
        MountPathRefused: `rel` leaves the mount, goes through a link, is missing, is larger
            than `MAX_IMAGE_BYTES` or is not an image.
    """
    parts = _parts("imagePath", rel, allow_empty=False)
    mime = IMAGE_MIME_TYPES.get(Path(parts[-1]).suffix.lower())
    if mime is None:
        kinds = ", ".join(sorted(IMAGE_MIME_TYPES))
        raise MountPathRefused("imagePath", f"an image file ({kinds})", rel)
    try:
        fd = open_file(root, "/".join(parts))
    except FileRefused as exc:
        raise MountPathRefused("imagePath", _expected(exc, "file"), rel) from None
    try:
        data = read_open(fd, max_bytes=MAX_IMAGE_BYTES, rel=rel)
    except FileRefused:
        raise MountPathRefused(
            "imagePath", f"an image of at most {MAX_IMAGE_BYTES} bytes", rel
        ) from None
    finally:
        os.close(fd)
    if not _looks_like(mime, data):
        raise MountPathRefused("imagePath", f"a file whose content is {mime}", rel)
    return Image(path="/".join(parts), mime_type=mime, data=data)


def _looks_like(mime: str, data: bytes) -> bool:
    if mime == "image/svg+xml":
        head = data[:4096].lstrip().lower()
        return head.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:65536].lower()
    if mime == "image/webp":
        return data.startswith(b"RIFF") and data[8:12] == b"WEBP"
    return data.startswith(_SIGNATURES[mime])
