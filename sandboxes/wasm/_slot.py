"""A worker's slot: the private folder a prepared guest is granted as its `/workspace`.

A guest prepared ahead of time was granted its folders before anyone knew which session it
would serve, so the session's files are moved into the slot for the run (one rename per
top-level entry, on the same file system) and moved back after it, by the one lending layer
(`sandboxes._lending`, with its clash rule). The slot records whose files it holds (`owner`)
before the first rename, so files stranded by a worker that died mid-run go back to their
session, whoever finds them: the engine right away, or `sweep` at the next start. Files that
cannot be given back are never deleted: their slot moves to `lost+found` beside the slots.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from .._files import has_entries
from .._lending import LendingIncomplete, give_back, lend, same_file_system

logger = logging.getLogger("sandgate.wasm")

MAX_ENTRIES = 512
"""A workspace with more top-level entries is run by a guest started for the call instead."""
_OWNER = "owner"
_WORKSPACE = "workspace"
_SITE = "site"
LOST_FOUND = "lost+found"
"""Beside the slots: slots whose files could not be given back, moved, never deleted."""


class SlotRefused(Exception):
    """The session's files cannot be moved into the slot (another file system, too many
    entries); the caller runs the call in a guest started for it instead."""


@dataclass(frozen=True, slots=True)
class Slot:
    """A slot folder: `root/workspace` is granted to the guest, `root/owner` names the session
    folder whose files are in it."""

    root: Path

    @property
    def workspace(self) -> Path:
        return self.root / _WORKSPACE

    @property
    def site(self) -> Path:
        """An empty folder, granted read-only on the guest's import path."""
        return self.root / _SITE

    @classmethod
    def create(cls, parent: Path, name: str) -> Slot:
        """A fresh, empty slot `parent/name` (0700), replacing a leftover of that name."""
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        slot = cls(parent / name)
        if os.path.lexists(slot.root):
            slot.remove()
        slot.root.mkdir(mode=0o700)
        slot.workspace.mkdir(mode=0o700)
        slot.site.mkdir(mode=0o700)
        return slot

    def owner(self) -> Path | None:
        """The session folder whose files the slot holds, if it holds any."""
        try:
            return Path((self.root / _OWNER).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return None

    def move_in(self, files: Path) -> None:
        """Move every top-level entry of `files` into the slot's workspace (`_lending.lend`).

        Raises:
            SlotRefused: nothing was moved (or everything moved was put back).
        """
        try:
            names = os.listdir(files)
        except OSError as exc:
            raise SlotRefused(f"cannot list {files}: {exc}") from exc
        if not same_file_system(files, self.workspace):
            # what the guest writes must land on the session's own disk
            raise SlotRefused(f"{files} is on another file system than {self.root}")
        if len(names) > MAX_ENTRIES:
            raise SlotRefused(f"{len(names)} top-level entries (more than {MAX_ENTRIES})")
        if os.listdir(self.workspace):
            raise SlotRefused("the slot is not empty")
        _write_owner(self.root / _OWNER, files)
        try:
            lend(files, self.workspace)
        except LendingIncomplete:
            raise  # files stayed in the slot: the owner record sends them back later
        except OSError as exc:
            (self.root / _OWNER).unlink(missing_ok=True)
            if exc.errno == errno.EXDEV:
                raise SlotRefused(f"{files} is on another file system than {self.root}") from exc
            raise SlotRefused(f"cannot move {files}'s files into the slot: {exc}") from exc

    def move_back(self, files: Path) -> None:
        """Give every entry of the slot's workspace back to `files`, as if the run had
        written there (`_lending.give_back`: a file replaces one of its name, folders merge,
        where kinds differ the run's entry wins), then drop the owner record.

        Raises:
            LendingIncomplete: some entries stayed in the slot (the owner record is kept, so
                the next `recover` tries again).
        """
        files.mkdir(parents=True, exist_ok=True)
        give_back(self.workspace, files)
        (self.root / _OWNER).unlink(missing_ok=True)

    def recover(self) -> bool:
        """Give stranded files back to their session, if any (after a worker died mid-run).
        False when some could not be given back (they stay in the slot). Files whose session
        folder is gone (the session ended) belong to nobody: they go with the slot."""
        owner = self.owner()
        if owner is None or not self.workspace.is_dir() or not owner.is_dir():
            return True
        logger.warning("wasm: moving files stranded in %s back to %s", self.root, owner)
        try:
            self.move_back(owner)
        except OSError as exc:
            logger.error("wasm: could not give %s back to %s: %s", self.root, owner, exc)
            return False
        return True

    def remove(self) -> None:
        """Give back what the slot holds, then delete it; a slot whose files could not be
        given back is moved to `lost+found` beside it instead, never deleted."""
        if self.recover() or not has_entries(self.workspace):
            shutil.rmtree(self.root, ignore_errors=True)
            return
        lost = self.root.parent / LOST_FOUND
        target = lost / f"{self.root.name}-{secrets.token_hex(4)}"
        try:
            lost.mkdir(mode=0o700, exist_ok=True)
            os.rename(self.root, target)
        except OSError as exc:
            logger.error("wasm: %s holds files it could not give back; kept: %s", self.root, exc)
            return
        logger.error("wasm: %s held files it could not give back; moved to %s", self.root, target)


def _write_owner(path: Path, files: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(files), encoding="utf-8")
    os.replace(tmp, path)


def sweep(parent: Path) -> None:
    """Return stranded files and remove the slots of workers that no longer run."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name == LOST_FOUND:
            continue
        pid = entry.name.removeprefix("worker-").split("-")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        Slot(entry).remove()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
