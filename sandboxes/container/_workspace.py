"""Pool slots: host folders a warm container mounts, lent a session's files for one run.

A warm container is created before anyone knows which session it will serve, so its mounts
cannot name the session's folders. Each container gets a fresh slot (`<pool>/<id>/files`,
read-write at /workspace, and `<pool>/<id>/site`, read-only at /site). To lend the slot to a
run, the engine renames the session's top-level entries into the slot (same filesystem: a
rename per entry, no copy), runs, then renames everything back (`sandboxes._lending`, the one
lending layer, with its one clash rule). Nothing in the container ever
sees a host path other than its two slot folders; renames never follow links. A claim record
in the slot names the session's folders, so a crash mid-run is repaired at the next start.

Recovery touches only what the engine made: pool folders named like an instance (12 hex
digits) whose owner record names that folder, and slots (16 hex digits) inside them. Anything
else in the pools folder is left alone (one warning each). A slot that holds files but no
readable claim is moved to `<pools>/lost+found/<slot>`, never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .. import _lending as lending
from .._files import Walk
from .._types import WorkspacePaths
from ._spec import LABEL_ENGINE, LABEL_INSTANCE, owner_alive

logger = logging.getLogger("sandgate.container")

CLAIM_FILE = "claim.json"
OWNER_FILE = "owner.json"
LOST_FOUND = "lost+found"
"""Under the pools folder: slots whose files belong to no known session, moved, not deleted."""
POOL_NAME = re.compile(r"[0-9a-f]{12}")
"""An instance's pool folder (its instance name); recovery touches no other name."""
SLOT_NAME = re.compile(r"[0-9a-f]{16}")
"""A slot under a pool folder."""

_warned: set[Path] = set()
"""Entries of the pools folder the engine did not make, already named in a warning."""


class Borrowing:
    """Lets one run at a time borrow a session's folders (runs of a session are serialized)."""

    def __init__(self) -> None:
        self._locks: dict[Path, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, workspace: WorkspacePaths) -> AsyncIterator[None]:
        key = workspace.files
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class CannotLend(Exception):
    """The session's folders cannot be moved into a slot (another filesystem, a mount…)."""


@dataclass(frozen=True, slots=True)
class Slot:
    """The host folders of one warm container."""

    root: Path
    files: Path
    site: Path

    @classmethod
    def make(cls, pool: Path, *, uid: int, gid: int) -> Slot:
        root = pool / uuid.uuid4().hex[:16]  # SLOT_NAME
        root.mkdir(mode=0o700, parents=True)
        slot = cls(root, root / "files", root / "site")
        slot.files.mkdir(mode=0o700)
        slot.site.mkdir(mode=0o755)
        if os.geteuid() == 0:
            os.chown(slot.files, uid, gid)
        return slot

    def discard(self) -> None:
        """Remove the slot once its container is gone; files still lent go back first (files
        of no known session are moved to the pools folder's `lost+found`)."""
        _release_slot(self.root, self.root.parent.parent / LOST_FOUND)


def adopt(folder: Path, *, uid: int, gid: int, top: bool = True) -> None:
    """Hand `folder`'s entries (and `folder` itself when `top`) to the sandbox user, so code
    running as that user can change them. Links are changed, never followed, and a file with
    several names is never given away (a name may be a hard link to a host file outside the
    workspace; `drop_foreign_links` removes those, this closes the race). Only root can."""
    if os.geteuid() != 0:
        return
    if top:
        with contextlib.suppress(OSError):
            os.lchown(folder, uid, gid)
    for fd, name, _prefix, st in Walk(folder).at():  # by descriptor: deep trees too
        shared = st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode)
        if (st.st_uid != uid or st.st_gid != gid) and not shared:
            with contextlib.suppress(OSError):
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


def lend(slot: Slot, workspace: WorkspacePaths, *, uid: int, gid: int) -> None:
    """Move the session's files and packages into `slot` for one run.

    Raises:
        CannotLend: the folders are on another filesystem than the slot, or a rename failed
            (what was moved is moved back first).
    """
    pairs = [(workspace.files, slot.files), (workspace.site, slot.site)]
    for source, target in pairs:
        if source.is_dir() and os.stat(source).st_dev != os.stat(target).st_dev:
            raise CannotLend(f"{source} is not on the filesystem of the pool ({slot.root})")
    record = {"files": str(workspace.files), "site": str(workspace.site)}
    (slot.root / CLAIM_FILE).write_text(json.dumps(record))
    adopt(workspace.files, uid=uid, gid=gid, top=False)
    try:
        for source, target in pairs:
            if source.is_dir():
                lending.lend(source, target)
    except OSError as exc:
        give_back(slot, workspace)
        raise CannotLend(f"could not move {workspace.files} into the pool: {exc}") from exc


def give_back(slot: Slot, workspace: WorkspacePaths) -> None:
    """Move everything in `slot` back to the session's folders (the container is stopped), by
    the clash rule of `sandboxes._lending` (a file replaces one of its name, folders merge,
    where kinds differ the run's entry wins); then drop the claim record.

    Raises:
        LendingIncomplete: some entries stayed in the slot (the claim is kept, so the slot
            is given back again, or moved to `lost+found`, never deleted).
    """
    left: list[str] = []
    for source, target in ((slot.files, workspace.files), (slot.site, workspace.site)):
        if not target.is_dir():
            logger.warning(
                "container: %s vanished during a run; its new files go to lost+found", target
            )
            continue
        try:
            lending.give_back(source, target)
        except lending.LendingIncomplete as exc:
            left += exc.left
    if left:
        raise lending.LendingIncomplete(
            f"{len(left)} entries could not be given back from {slot.root}", tuple(left)
        )
    (slot.root / CLAIM_FILE).unlink(missing_ok=True)


def make_pool(pools: Path, labels: dict[str, str]) -> Path:
    """Create this instance's pool folder under `pools`, with its owner record, atomically.

    The owner record names the folder (`sandgate.instance`) and the engine: it is the marker
    by which `recover` tells the engine's own folders from anything else in `pools`.

    Raises:
        ValueError: the instance name is not 12 lowercase hex digits (recovery would not
            recognise the folder as the engine's).
    """
    name = labels[LABEL_INSTANCE]
    if not POOL_NAME.fullmatch(name):
        raise ValueError(f"instance: expected 12 lowercase hex digits, got {name!r}")
    pools.mkdir(mode=0o755, parents=True, exist_ok=True)
    partial = pools / f".{name}"
    partial.mkdir(mode=0o700)
    final = pools / name
    try:
        (partial / OWNER_FILE).write_text(json.dumps(labels))
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def recover(pools: Path) -> list[str]:
    """Repair the pool folders of dead server instances under `pools`: give claimed files back
    to their sessions, then remove the folders. Returns the session folders given back.

    Only the engine's own folders are touched: a 12-hex-digit name whose owner record names
    that folder and this engine. Anything else in `pools` (the operator may share the folder)
    is left alone, with one warning per entry."""
    restored: list[str] = []
    if not pools.is_dir():
        return restored
    for entry in sorted(os.scandir(pools), key=lambda e: e.name):
        if entry.name == LOST_FOUND:
            continue  # salvaged files
        if entry.name.startswith(".") and POOL_NAME.fullmatch(entry.name[1:]):
            _remove_half_made(entry)  # a folder being made, or left half-made by a crash
            continue
        pool = Path(entry.path)
        owner = _own_pool_owner(entry)
        if owner is None:
            _warn_foreign(
                pool, "is not a pool folder of the container engine (no owner record naming it)"
            )
            continue
        if owner_alive(owner):
            continue
        restored += release_pool(pool)
    return restored


def release_pool(pool: Path) -> list[str]:
    """Give every claimed slot of `pool` back to its session, move unclaimed files to
    `lost+found`, then remove the pool folder. Slots whose files could not be given back, and
    entries the engine did not make, are kept (and so is the folder). Returns the session
    folders given back."""
    restored: list[str] = []
    kept = False
    lost = pool.parent / LOST_FOUND
    for entry in sorted(os.scandir(pool), key=lambda e: e.name) if pool.is_dir() else ():
        if entry.name == OWNER_FILE:
            continue
        root = Path(entry.path)
        if not (SLOT_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
            _warn_foreign(root, "is not a slot of the container engine")
            kept = True
            continue
        gone, session = _release_slot(root, lost)
        kept |= not gone
        if session is not None:
            restored.append(str(session.files))
    if not kept:
        (pool / OWNER_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.rmdir(pool)
    return restored


HALF_MADE_GRACE_S = 60.0
"""A half-made pool folder with no owner record yet is removed only once this old: `make_pool`
writes the record right after making the folder, so a younger one may be a live server's."""


def _remove_half_made(entry: os.DirEntry[str]) -> None:
    """Remove a `.<instance>` folder `make_pool` left behind when it stopped before its rename:
    only when it holds nothing but its owner record, and that record names a server that is
    gone (or, with no readable record, the folder is older than `HALF_MADE_GRACE_S`)."""
    folder = Path(entry.path)
    if not entry.is_dir(follow_symlinks=False):
        _warn_foreign(folder, "has a pool folder's name but is not a folder")
        return
    try:
        names = os.listdir(folder)
        if set(names) - {OWNER_FILE}:
            _warn_foreign(folder, "is a half-made pool folder holding entries not the engine's")
            return
        owner = _owner_record(folder / OWNER_FILE, entry.name[1:]) if names else None
        if owner is not None:
            if owner_alive(owner):
                return
        elif time.time() - entry.stat(follow_symlinks=False).st_mtime < HALF_MADE_GRACE_S:
            return  # no readable record yet: maybe one being written
        for name in names:
            (folder / name).unlink()
        folder.rmdir()
    except OSError as exc:
        logger.warning("container: could not remove the half-made pool folder %s: %s", folder, exc)


def _owner_record(path: Path, instance: str) -> dict[str, str] | None:
    """The owner record at `path` when it names `instance` and this engine, else None."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not all(isinstance(v, str) for v in owner.values()):
        return None
    if owner.get(LABEL_INSTANCE) != instance or owner.get(LABEL_ENGINE) != "container":
        return None
    return owner


def _own_pool_owner(entry: os.DirEntry[str]) -> dict[str, str] | None:
    """The owner record of `entry` when it is a pool folder the engine made, else None."""
    if not (POOL_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
        return None
    return _owner_record(Path(entry.path, OWNER_FILE), entry.name)


def _warn_foreign(path: Path, why: str) -> None:
    if path not in _warned:
        _warned.add(path)
        logger.warning("container: %s %s; left alone", path, why)


def _release_slot(root: Path, lost: Path) -> tuple[bool, WorkspacePaths | None]:
    """Empty and remove the slot at `root`: its claimed files go back to their session; files
    without a readable claim are moved to `lost/<slot>`, never deleted. Returns whether the
    slot is gone (False: its files could not be given back or moved, so it is kept), and the
    session folders its files went back to."""
    if not os.path.lexists(root):
        return True, None
    claim = root / CLAIM_FILE
    workspace: WorkspacePaths | None = None
    if os.path.lexists(claim):
        try:
            record = json.loads(claim.read_text())
            workspace = WorkspacePaths(Path(record["files"]), Path(record["site"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("container: the claim record in %s is unreadable: %s", root, exc)
    if workspace is not None:
        try:
            give_back(Slot(root, root / "files", root / "site"), workspace)
        except OSError as exc:
            logger.error("container: could not give back the files in %s: %s", root, exc)
            return False, None
    elif _holds_files(root):
        return _salvage(root, lost), None
    shutil.rmtree(root, ignore_errors=True)
    return True, workspace


def _holds_files(root: Path) -> bool:
    """Whether the slot at `root` holds anything but its two empty folders (and a claim);
    True when that cannot be told."""
    try:
        return _holds_files_in(root)
    except OSError:
        return True


def _holds_files_in(root: Path) -> bool:
    for name in os.listdir(root):
        if name == CLAIM_FILE:
            continue
        path = root / name
        if name not in ("files", "site") or path.is_symlink() or not path.is_dir():
            return True
        if os.listdir(path):
            return True
    return False


def _salvage(root: Path, lost: Path) -> bool:
    """Move the slot at `root`, whose files belong to no known session, to `lost/<slot>`."""
    target = lost / root.name
    try:
        lost.mkdir(mode=0o700, exist_ok=True)
        if lost.is_symlink() or not lost.is_dir():
            raise NotADirectoryError(f"{lost} is not a folder")
        if os.path.lexists(target):
            target = lost / f"{root.name}-{uuid.uuid4().hex[:8]}"
        os.rename(root, target)
    except OSError as exc:
        logger.error("container: %s holds files of no known session; kept: %s", root, exc)
        return False
    logger.warning(
        "container: %s held files of no known session (no readable claim); moved to %s",
        root,
        target,
    )
    return True
