"""Pool slots: host folders a warm container mounts, lent a session's files for one run.

A warm container is created before anyone knows which session it will serve, so its mounts
cannot name the session's folders. Each container gets a fresh slot (`<pool>/<id>/files`,
read-write at /workspace, and `<pool>/<id>/site`, read-only at /site). To lend the slot to a
run, the engine renames the session's top-level entries into the slot (same filesystem: a
rename per entry, no copy), runs, then renames everything back. Nothing in the container ever
sees a host path other than its two slot folders; renames never follow links. A claim record
in the slot names the session's folders, so a crash mid-run is repaired at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .._types import WorkspacePaths
from ._spec import LABEL_INSTANCE, owner_alive

logger = logging.getLogger("sandgate.container")

CLAIM_FILE = "claim.json"
OWNER_FILE = "owner.json"


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
        root = pool / uuid.uuid4().hex[:16]
        root.mkdir(mode=0o700, parents=True)
        slot = cls(root, root / "files", root / "site")
        slot.files.mkdir(mode=0o700)
        slot.site.mkdir(mode=0o755)
        if os.geteuid() == 0:
            os.chown(slot.files, uid, gid)
        return slot

    def discard(self) -> None:
        """Remove the slot once its container is gone; files still lent go back first."""
        if _give_back_claimed(self.root):
            shutil.rmtree(self.root, ignore_errors=True)


def adopt(folder: Path, *, uid: int, gid: int, top: bool = True) -> None:
    """Hand `folder`'s entries (and `folder` itself when `top`) to the sandbox user, so code
    running as that user can change them. Links are changed, never followed, and a file with
    several names is never given away (a name may be a hard link to a host file outside the
    workspace; `drop_foreign_links` removes those, this closes the race). Only root can."""
    if os.geteuid() != 0:
        return
    stack = [folder]
    if top:
        with contextlib.suppress(OSError):
            os.lchown(folder, uid, gid)
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                shared = st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode)
                if (st.st_uid != uid or st.st_gid != gid) and not shared:
                    os.lchown(entry.path, uid, gid)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))


def _move_entries(source: Path, target: Path) -> list[str]:
    moved: list[str] = []
    for name in sorted(os.listdir(source)):
        _move(source / name, target / name)
        moved.append(name)
    return moved


def _move(source: Path, target: Path) -> None:
    """Rename `source` to `target`; when `target` exists, merge folders and let files of
    `source` win (a collision only happens when something wrote the folder mid-run)."""
    try:
        os.rename(source, target)
        return
    except OSError:
        both_dirs = (
            source.is_dir()
            and not source.is_symlink()
            and target.is_dir()
            and not target.is_symlink()
        )
        if not both_dirs:
            if not os.path.lexists(target):
                raise
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
            os.rename(source, target)
            return
    for name in os.listdir(source):
        _move(source / name, target / name)
    os.rmdir(source)


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
                _move_entries(source, target)
    except OSError as exc:
        give_back(slot, workspace)
        raise CannotLend(f"could not move {workspace.files} into the pool: {exc}") from exc


def give_back(slot: Slot, workspace: WorkspacePaths) -> None:
    """Move everything in `slot` back to the session's folders (the container is stopped)."""
    for source, target in ((slot.files, workspace.files), (slot.site, workspace.site)):
        if not target.is_dir():
            logger.warning("container: %s vanished during a run; its new files are dropped", target)
            continue
        _move_entries(source, target)
    (slot.root / CLAIM_FILE).unlink(missing_ok=True)


def make_pool(pools: Path, labels: dict[str, str]) -> Path:
    """Create this instance's pool folder under `pools`, with its owner record, atomically."""
    pools.mkdir(mode=0o755, parents=True, exist_ok=True)
    name = labels[LABEL_INSTANCE]
    partial = pools / f".{name}"
    partial.mkdir(mode=0o700)
    (partial / OWNER_FILE).write_text(json.dumps(labels))
    final = pools / name
    os.rename(partial, final)
    return final


def recover(pools: Path) -> list[str]:
    """Repair the pool folders of dead server instances under `pools`: give claimed files back
    to their sessions, then remove the folders. Returns the session folders given back."""
    restored: list[str] = []
    if not pools.is_dir():
        return restored
    for pool in pools.iterdir():
        if pool.name.startswith(".") or not pool.is_dir():
            continue
        try:
            owner = json.loads((pool / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = {}
        if isinstance(owner, dict) and owner_alive(owner):
            continue
        restored += release_pool(pool)
    return restored


def release_pool(pool: Path) -> list[str]:
    """Give every claimed slot of `pool` back to its session, then remove the pool folder
    (slots whose files could not be given back are kept). Returns the folders given back."""
    restored: list[str] = []
    kept = False
    for root in pool.iterdir() if pool.is_dir() else ():
        claim = root / CLAIM_FILE
        if claim.is_file():
            with contextlib.suppress(OSError, ValueError):
                restored.append(str(json.loads(claim.read_text()).get("files")))
        if _give_back_claimed(root):
            shutil.rmtree(root, ignore_errors=True)
        else:
            kept = True
    if not kept:
        shutil.rmtree(pool, ignore_errors=True)
    return restored


def _give_back_claimed(root: Path) -> bool:
    """Give the files of a claimed slot back to its session; False when that failed."""
    claim = root / CLAIM_FILE
    if not claim.is_file():
        return True
    try:
        record = json.loads(claim.read_text())
        workspace = WorkspacePaths(Path(record["files"]), Path(record["site"]))
        give_back(Slot(root, root / "files", root / "site"), workspace)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.error("container: could not give back the files in %s: %s", root, exc)
        return False
    return True
