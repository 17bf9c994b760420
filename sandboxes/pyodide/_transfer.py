"""Move files between a session's host folders and its guest's in-memory copy of them."""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Any

from .._files import (
    MAX_IMAGES,
    DiskUsage,
    Scan,
    Snapshot,
    changed,
    images_among,
    scan,
    snapshot,
)
from .._types import DEFAULT_WORKSPACE_FILES, Image
from ._process import DenoProcess
from ._sync import (
    MAX_FILE_BYTES,
    WORKSPACE_ROOT,
    Mirror,
    Plan,
    Root,
    batches,
    mount_root,
    read_batch,
    remove_empty_folders,
    safe_rel,
    unlink_file,
    write_file,
)

COPY_TIMEOUT_S = 60.0
"""Longest wait for a run's files to be copied in, or for one file to come back."""
ALLOCATION_BYTES = 4096
"""The block a written file is assumed to take on disk, for the copy-out budget."""


@dataclass(frozen=True, slots=True)
class Settled:
    """What a run changed in the writable host folders, once its changes are written back.

    Attributes:
        touched: Workspace-relative paths, and guest paths `/mnt/NAME/…` of mount files.
        images: The images among them (paths as in `touched`).
        over_budget: Some files were not written back: a folder would pass its budget.
    """

    touched: tuple[str, ...]
    images: tuple[Image, ...]
    over_budget: bool


async def copy_in(proc: DenoProcess, sent: Plan) -> None:
    """Set up new mounts, send the deletions and the files the guest lacks, one per line."""
    for mount in sent.mount:
        await proc.send({"op": "mount", "root": mount_root(mount), "read_only": mount.read_only})
    for root, paths in sent.delete.items():
        if paths:
            await proc.send({"op": "delete", "root": root, "paths": paths})
    hosts = sent.hosts
    for group in batches(sent.send):
        for root, rel, data in await asyncio.to_thread(read_batch, hosts, group):
            encoded = base64.b64encode(data).decode("ascii")
            await proc.send({"op": "put", "root": root, "path": rel, "data": encoded})


def scanned_roots(sent: Plan) -> list[str]:
    """The guest roots whose changes the guest reports after a run (the writable ones)."""
    return [root.guest for root in sent.roots if root.writable]


def _changed_entries(report: Any) -> list[tuple[str, int]]:
    entries: list[tuple[str, int]] = []
    if isinstance(report, list):
        for item in report:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[1], int):
                rel = safe_rel(item[0])
                if rel is not None and item[1] >= 0:
                    entries.append((rel, item[1]))
    return entries


def _report_of(
    answer: dict[str, Any], guest: str
) -> tuple[list[Any], list[tuple[str, int]], list[str]]:
    """(files deleted, files changed with their sizes, folders deleted) of one guest root."""
    files = answer.get("files")
    report = files.get(guest) if isinstance(files, dict) else None
    if not isinstance(report, dict):
        return [], [], []
    deleted = report.get("deleted")
    gone = report.get("folders_deleted")
    folders = [f for f in (safe_rel(g) for g in gone) if f] if isinstance(gone, list) else []
    return (
        deleted if isinstance(deleted, list) else [],
        _changed_entries(report.get("changed")),
        folders,
    )


async def copy_out(
    proc: DenoProcess,
    answer: dict[str, Any],
    sent: Plan,
    mirror: Mirror,
    *,
    budget: int,
    max_files: int = DEFAULT_WORKSPACE_FILES,
) -> Settled:
    """Fetch the files the run changed in each writable root and write them (and its
    deletions) to the host; update `mirror` to what the guest now holds.

    The guest's report is untrusted: paths are checked, sizes re-measured, each folder's
    budget (`budget` bytes of disk, `max_files` inodes) enforced on what is actually received,
    and nothing is written through a link. Folders the code removed are removed on the host
    when empty.
    """
    touched: list[str] = []
    images: list[Image] = []
    over = False
    for root in sent.roots:
        if not root.writable:
            mirror.held[root.guest] = sent.held[root.guest]
            continue
        held, written, refused = await _settle(
            proc, root, answer, sent, budget=budget, max_files=max_files
        )
        mirror.held[root.guest] = held
        over = over or refused
        if root.guest == WORKSPACE_ROOT:
            paths = changed(sent.before[root.guest], held) if written else ()
            found = await asyncio.to_thread(images_among, root.host, paths)
        else:
            found = tuple(
                Image(f"{root.guest}/{i.path}", i.mime_type, i.data)
                for i in await asyncio.to_thread(images_among, root.host, written)
            )
            paths = tuple(f"{root.guest}/{rel}" for rel in written)
        touched += paths
        images += found[: MAX_IMAGES - len(images)]
    if sent.mount:
        mirror.mounts = sent.mount
    return Settled(tuple(touched), tuple(images), over)


def _allocated(size: int) -> int:
    """The disk a file of `size` bytes is expected to occupy (whole blocks)."""
    return -(-size // ALLOCATION_BYTES) * ALLOCATION_BYTES


async def _settle(
    proc: DenoProcess,
    root: Root,
    answer: dict[str, Any],
    sent: Plan,
    *,
    budget: int,
    max_files: int,
) -> tuple[Snapshot, tuple[str, ...], bool]:
    """Write one root's changes back: (what the guest now holds, paths written, refused?).

    The budget counts what the host folder occupies (allocated bytes and inodes, measured by
    descriptor before the writes, then estimated per file written); files that would pass it
    are refused and deleted in the guest too, so the guest holds what the host holds."""
    deleted, reported, folders_gone = _report_of(answer, root.guest)
    held = sent.held[root.guest]
    if not deleted and not reported and not folders_gone:  # the common case: nothing to do
        return dict(held), (), False
    folder = root.host
    found = await asyncio.to_thread(scan, folder) if folder.is_dir() else Scan({}, DiskUsage())
    current = dict(found.files)
    spent, inodes = found.usage.bytes, found.usage.files
    for rel in deleted:
        safe = safe_rel(rel)
        # Only files the guest got from the host, still as the guest got them: never a host
        # file it did not know, nor one changed on the host since (a shared mount).
        if (
            safe is not None
            and safe in held
            and current.get(safe) == held[safe]
            and await asyncio.to_thread(unlink_file, folder, safe)
        ):
            spent -= _allocated(current.pop(safe, (0, 0))[0])
            inodes -= 1
    if folders_gone:
        await asyncio.to_thread(remove_empty_folders, folder, folders_gone)
    refused: set[str] = set()
    written: list[str] = []
    for rel, size in reported:
        had = current.get(rel)
        room = budget - spent + (_allocated(had[0]) if had else 0)
        if (
            size > MAX_FILE_BYTES
            or _allocated(size) > room
            or (had is None and inodes + 1 > max_files)
        ):
            refused.add(rel)
            continue
        request = {"op": "get", "root": root.guest, "path": rel}
        reply = await proc.request(request, timeout_s=COPY_TIMEOUT_S)
        try:
            data = base64.b64decode(reply.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            continue
        if _allocated(len(data)) > room:
            refused.add(rel)
            continue
        if await asyncio.to_thread(write_file, folder, rel, data):
            spent += _allocated(len(data)) - (_allocated(had[0]) if had else 0)
            inodes += had is None
            current[rel] = (len(data), 0)
            written.append(rel)
    if refused:  # the guest drops what the host did not take: both hold the same files
        await proc.send({"op": "delete", "root": root.guest, "paths": sorted(refused)})
    after = await asyncio.to_thread(snapshot, folder) if folder.is_dir() else {}
    keep = (set(held) | {rel for rel, _ in reported}) - refused
    return {p: after[p] for p in keep if p in after}, tuple(sorted(written)), bool(refused)
