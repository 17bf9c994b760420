"""Workspace file names from clients: checked, and written without following any link."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from sandboxes import FileRefused, kind_of, open_folder, split_rel

from .._errors import ArgumentError

MAX_PATH_CHARS = 1024
MAX_COMPONENT_CHARS = 255


def check_file_name(file_name: str, *, argument: str = "file_name", suffix: str = ".py") -> str:
    """The workspace-relative POSIX path that `file_name` names.

    Raises:
        ArgumentError: empty, absolute, leaving the workspace with `..`, too long, with a NUL
            or a backslash, or not ending in `suffix`.
    """
    shown = repr(file_name) if len(file_name) <= 80 else repr(file_name[:80]) + "…"
    if not file_name.strip():
        raise ArgumentError(argument, "a file name such as 'script.py'", "an empty string")
    if len(file_name) > MAX_PATH_CHARS:
        raise ArgumentError(argument, f"at most {MAX_PATH_CHARS} characters", shown)
    try:
        parts = split_rel(file_name)
    except FileRefused as exc:
        what = "a path inside the session workspace" if "'..'" in exc.got else exc.expected
        raise ArgumentError(argument, what, f"{shown}, {exc.got}") from None
    if not parts:
        raise ArgumentError(argument, "a file name such as 'script.py'", shown)
    if any(len(p) > MAX_COMPONENT_CHARS for p in parts):
        raise ArgumentError(
            argument, f"path parts of at most {MAX_COMPONENT_CHARS} characters", shown
        )
    if suffix and not file_name.endswith(suffix):
        raise ArgumentError(argument, f"a file name ending in '{suffix}'", shown)
    return "/".join(parts)


def refuse_links(root: Path, rel: str, *, argument: str = "file_name") -> None:
    """Refuse a path whose existing parts include a symbolic link or a non-regular file
    (a FIFO, socket or device is refused here, before anything opens it). Walked by
    descriptor from `root`.

    Raises:
        ArgumentError: a part of the path is a link (which could lead out of the workspace),
            not a folder, or the file itself is not a regular file.
    """
    parts = rel.split("/")
    fd = open_folder(root, [])
    try:
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISLNK(st.st_mode):
                raise ArgumentError(
                    argument,
                    "a path with no symbolic links",
                    f"{rel!r}, where {'/'.join(parts[: i + 1])!r} is a link",
                )
            last = i == len(parts) - 1
            if not last and not stat.S_ISDIR(st.st_mode):
                raise ArgumentError(argument, "a path through folders", f"{rel!r}")
            if last:
                if not stat.S_ISREG(st.st_mode):
                    raise ArgumentError(
                        argument, "a regular file", f"{rel!r}, which is {kind_of(st.st_mode)}"
                    )
                return
            nxt = open_folder(fd, [part])
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def exists(root: Path, rel: str) -> bool:
    """Whether `root/rel` exists (links are not followed; walked by descriptor)."""
    parts = rel.split("/")
    try:
        fd = open_folder(root, parts[:-1])
    except FileRefused:
        return False
    try:
        os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)
    return True


def write_text(root: Path, rel: str, text: str) -> None:
    """Write `text` to `root/rel`, making folders, opening every part with O_NOFOLLOW.

    The bytes go to a new file that then replaces the name, so a name that was a hard link to
    some file elsewhere on the host is re-pointed, never written through.
    """
    parts = rel.split("/")
    fd = open_folder(root, parts[:-1], create=True)
    try:
        temporary = f".{parts[-1]}.sandgate-{secrets.token_hex(6)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        out = os.open(temporary, flags, 0o644, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as handle:
                handle.write(text.encode("utf-8"))
            os.replace(temporary, parts[-1], src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=fd)
            raise
    finally:
        os.close(fd)
