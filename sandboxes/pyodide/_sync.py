"""Copy a session's workspace into its guest and the guest's changes back, never via a link.

Deno is given no access to the workspace at all (its permissions are fixed when a pooled
process starts, before any session owns it, and Deno follows symlinks found inside an allowed
folder). Instead the host sends the files that changed since the last run and writes back
what the guest changed, reading and writing with `O_NOFOLLOW` on every path component.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import Snapshot, changed, images_among, read_regular_file, snapshot
from .._types import Image, WorkspacePaths

MAX_FILE_BYTES = 64 * 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass(slots=True)
class Mirror:
    """What a guest already holds of the host folders (path → size, mtime at sync time)."""

    files: Snapshot = field(default_factory=dict)
    site: Snapshot = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outbound:
    """What one run sends to its guest, and what the guest will hold once it applied it."""

    before: Snapshot
    put: dict[str, str]
    delete: list[str]
    held: Snapshot
    site_put: dict[str, str]
    site_delete: list[str]
    site_held: Snapshot


@dataclass(frozen=True, slots=True)
class Settled:
    """What a run changed in the workspace, once the guest's changes are written back."""

    touched: tuple[str, ...]
    images: tuple[Image, ...]
    over_budget: bool


def prepare(workspace: WorkspacePaths, mirror: Mirror, budget: int) -> Outbound:
    """The files to send before a run (blocking: call it in a thread)."""
    before = snapshot(workspace.files) if workspace.files.is_dir() else {}
    put, delete, held = outgoing(workspace.files, mirror.files, budget)
    site_put, site_delete, site_held = outgoing(workspace.site, mirror.site, budget)
    return Outbound(before, put, delete, held, site_put, site_delete, site_held)


def settle(
    files: Path, answer: dict[str, Any], sent: Outbound, mirror: Mirror, budget: int
) -> Settled:
    """Write the guest's changes back and update `mirror` (blocking: call it in a thread)."""
    reported = answer.get("files")
    written, over = write_back(files, reported, answer.get("deleted"), budget=budget)
    after = snapshot(files) if files.is_dir() else {}
    refused = set(reported) - set(written) if isinstance(reported, dict) else set()
    keep = (set(sent.held) | set(written)) - refused
    mirror.files = {p: after[p] for p in keep if p in after}
    mirror.site = sent.site_held
    touched = changed(sent.before, after)
    images = images_among(files, touched)
    return Settled(touched, images, over or bool(answer.get("workspace_over")))


def safe_rel(rel: object) -> str | None:
    """`rel` normalised if it is a plain relative path (no `..`, no absolute, no NUL)."""
    if not isinstance(rel, str) or rel.startswith("/") or "\0" in rel:
        return None
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


Outgoing = tuple[dict[str, str], list[str], Snapshot]


def outgoing(root: Path, known: Snapshot, budget: int) -> Outgoing:
    """Files of `root` the guest lacks or holds stale, base64, at most `budget` bytes in all.

    Returns:
        (files to put, paths to delete, the snapshot the guest will hold once applied)
    """
    now = snapshot(root) if root.is_dir() else {}
    put: dict[str, str] = {}
    held: Snapshot = {p: sig for p, sig in known.items() if p in now}
    spent = 0
    for rel, sig in sorted(now.items()):
        if known.get(rel) == sig:
            continue
        if sig[0] > MAX_FILE_BYTES or spent + sig[0] > budget:
            continue
        data = read_regular_file(root, rel, max_bytes=MAX_FILE_BYTES)
        if data is None:
            continue
        put[rel] = base64.b64encode(data).decode("ascii")
        held[rel] = sig
        spent += len(data)
    deleted = sorted(set(known) - set(now))
    return put, deleted, held


def write_back(
    root: Path, files: Any, deleted: Any, *, budget: int
) -> tuple[tuple[str, ...], bool]:
    """Write what the guest reports into `root`, safely; untrusted input, checked here.

    Returns:
        (paths written or deleted, whether some were refused for the workspace size budget)
    """
    done: list[str] = []
    over = False
    spent = sum(size for size, _ in snapshot(root).values()) if root.is_dir() else 0
    if isinstance(deleted, list):
        for rel in deleted:
            safe = safe_rel(rel)
            if safe is not None and _unlink_beneath(root, safe):
                done.append(safe)
    if isinstance(files, dict):
        for rel, encoded in files.items():
            safe = safe_rel(rel)
            if safe is None or not isinstance(encoded, str):
                continue
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                continue
            if spent + len(data) > budget:
                over = True
                continue
            if _write_beneath(root, safe, data):
                spent += len(data)
                done.append(safe)
    return tuple(sorted(set(done))), over


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


def _write_beneath(root: Path, rel: str, data: bytes) -> bool:
    parts = rel.split("/")
    fd = _parent_fd(root, parts, create=True)
    if fd is None:
        return False
    try:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return False  # never write through a link or over a folder
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


def _unlink_beneath(root: Path, rel: str) -> bool:
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
