"""Move files between a session's host workspace and its guest's in-memory copy of it."""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import changed, images_among, snapshot
from .._types import Image, WorkspacePaths
from ._process import DenoProcess
from ._sync import (
    MAX_FILE_BYTES,
    Mirror,
    Plan,
    batches,
    read_batch,
    safe_rel,
    unlink_file,
    write_file,
)

COPY_TIMEOUT_S = 60.0
"""Longest wait for a run's files to be copied in, or for one file to come back."""


@dataclass(frozen=True, slots=True)
class Settled:
    """What a run changed in the workspace, once the guest's changes are written back."""

    touched: tuple[str, ...]
    images: tuple[Image, ...]
    over_budget: bool


async def copy_in(proc: DenoProcess, workspace: WorkspacePaths, sent: Plan) -> None:
    """Send the deletions and the files the guest lacks, one file per protocol line."""
    for root, paths in sent.delete.items():
        if paths:
            await proc.send({"op": "delete", "root": root, "paths": paths})
    for group in batches(sent.send):
        for root, rel, data in await asyncio.to_thread(read_batch, workspace, group):
            encoded = base64.b64encode(data).decode("ascii")
            await proc.send({"op": "put", "root": root, "path": rel, "data": encoded})


def _changed_entries(report: Any) -> list[tuple[str, int]]:
    entries: list[tuple[str, int]] = []
    if isinstance(report, list):
        for item in report:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[1], int):
                rel = safe_rel(item[0])
                if rel is not None and item[1] >= 0:
                    entries.append((rel, item[1]))
    return entries


async def copy_out(
    proc: DenoProcess,
    files: Path,
    answer: dict[str, Any],
    sent: Plan,
    mirror: Mirror,
    *,
    budget: int,
) -> Settled:
    """Fetch the files the run changed, write them (and its deletions) into `files`.

    The guest's report is untrusted: paths are checked, sizes re-measured, the workspace
    budget enforced on the bytes actually received, and nothing is written through a link.
    """
    deleted, reported = answer.get("deleted"), _changed_entries(answer.get("changed"))
    if not deleted and not reported:  # the common case: nothing to fetch, nothing to scan
        mirror.files, mirror.site = dict(sent.held), sent.site_held
        return Settled((), (), False)
    current = await asyncio.to_thread(snapshot, files) if files.is_dir() else {}
    spent = sum(size for size, _ in current.values())
    for rel in deleted if isinstance(deleted, list) else []:
        safe = safe_rel(rel)
        # Only files the guest got from the host: never a host file it did not know.
        if safe in sent.held and await asyncio.to_thread(unlink_file, files, safe):
            spent -= current.pop(safe, (0, 0))[0]
    refused: set[str] = set()
    over = False
    for rel, size in reported:
        room = budget - spent + current.get(rel, (0, 0))[0]
        if size > MAX_FILE_BYTES or size > room:
            over = True
            refused.add(rel)
            continue
        reply = await proc.request({"op": "get", "path": rel}, timeout_s=COPY_TIMEOUT_S)
        try:
            data = base64.b64decode(reply.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(data) > room:
            over = True
            refused.add(rel)
            continue
        if await asyncio.to_thread(write_file, files, rel, data):
            spent += len(data) - current.get(rel, (0, 0))[0]
            current[rel] = (len(data), 0)
    after = await asyncio.to_thread(snapshot, files) if files.is_dir() else {}
    keep = (set(sent.held) | {rel for rel, _ in reported}) - refused
    mirror.files = {p: after[p] for p in keep if p in after}
    mirror.site = sent.site_held
    touched = changed(sent.before, after)
    images = await asyncio.to_thread(images_among, files, touched)
    return Settled(touched, images, over)
