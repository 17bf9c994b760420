"""A worker's slot: the private folder a prepared guest is granted as its `/workspace`.

A guest prepared ahead of time was granted its folders before anyone knew which session it
would serve, so the session's files are moved into the slot for the run (one rename per
top-level entry, on the same file system) and moved back after it. The slot records whose
files it holds (`owner`) before the first rename, so files stranded by a worker that died
mid-run go back to their session, whoever finds them: the engine right away, or `sweep` at
the next start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("sandgate.wasm")

MAX_ENTRIES = 512
"""A workspace with more top-level entries is run by a guest started for the call instead."""
_OWNER = "owner"
_WORKSPACE = "workspace"
_SITE = "site"


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
        if slot.root.exists():
            slot.recover()
            shutil.rmtree(slot.root, ignore_errors=True)
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
        """Move every top-level entry of `files` into the slot's workspace.

        Raises:
            SlotRefused: nothing was moved (or everything moved was put back).
        """
        try:
            names = os.listdir(files)
            same_disk = os.stat(files).st_dev == os.stat(self.workspace).st_dev
        except OSError as exc:
            raise SlotRefused(f"cannot list {files}: {exc}") from exc
        if not same_disk:  # what the guest writes must land on the session's own disk
            raise SlotRefused(f"{files} is on another file system than {self.root}")
        if len(names) > MAX_ENTRIES:
            raise SlotRefused(f"{len(names)} top-level entries (more than {MAX_ENTRIES})")
        if os.listdir(self.workspace):
            raise SlotRefused("the slot is not empty")
        _write_owner(self.root / _OWNER, files)
        moved: list[str] = []
        try:
            for name in names:
                os.rename(files / name, self.workspace / name)
                moved.append(name)
        except OSError as exc:
            for name in moved:
                with contextlib.suppress(OSError):
                    os.rename(self.workspace / name, files / name)
            (self.root / _OWNER).unlink(missing_ok=True)
            if exc.errno == errno.EXDEV:
                raise SlotRefused(f"{files} is on another file system than {self.root}") from exc
            raise SlotRefused(f"cannot move {files}'s files into the slot: {exc}") from exc

    def move_back(self, files: Path) -> None:
        """Move every entry of the slot's workspace back into `files`, as if the run had
        written there: a file replaces one of its name, a folder merges into one of its name;
        an entry whose kind differs from what the host holds lands beside it as NAME.run-N."""
        files.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(self.workspace):
            _move_entry(self.workspace / name, files / name)
        (self.root / _OWNER).unlink(missing_ok=True)

    def recover(self) -> None:
        """Give stranded files back to their session, if any (after a worker died mid-run)."""
        owner = self.owner()
        if owner is None or not self.workspace.is_dir():
            return
        if owner.is_dir():
            logger.warning("wasm: moving files stranded in %s back to %s", self.root, owner)
            self.move_back(owner)

    def remove(self) -> None:
        """Give back what the slot holds, then delete it."""
        self.recover()
        shutil.rmtree(self.root, ignore_errors=True)


def _move_entry(source: Path, target: Path) -> None:
    """`source` to `target` without following links, on the same disk when it can."""
    try:
        there = os.lstat(target)
    except FileNotFoundError:
        there = None
    mine = os.lstat(source)
    try:
        if there is None:
            os.rename(source, target)
        elif stat.S_ISDIR(there.st_mode) and stat.S_ISDIR(mine.st_mode):
            for name in os.listdir(source):
                _move_entry(source / name, target / name)
            os.rmdir(source)
        elif not stat.S_ISDIR(there.st_mode) and not stat.S_ISDIR(mine.st_mode):
            os.replace(source, target)
        else:
            n = 1
            while os.path.lexists(target.with_name(f"{target.name}.run-{n}")):
                n += 1
            os.rename(source, target.with_name(f"{target.name}.run-{n}"))
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            logger.error("wasm: could not move %s back to %s: %s", source, target, exc)
            return
        try:  # the session folder moved to another disk meanwhile: copy, then remove
            shutil.move(source, target)
        except OSError as copy_exc:
            logger.error("wasm: could not copy %s back to %s: %s", source, target, copy_exc)


def _write_owner(path: Path, files: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(files), encoding="utf-8")
    os.replace(tmp, path)


def sweep(parent: Path) -> None:
    """Return stranded files and remove the slots of workers that no longer run."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
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
