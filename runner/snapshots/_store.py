"""Where snapshots live: one folder per snapshot under the server's state folder, grouped by
the grant that owns it, each with a manifest written last, then published by renaming its
folder to the snapshot's id (atomic: a reader sees a whole snapshot or none). Nothing here is
kept only in memory, so a restarted server finds every snapshot again.

Several servers may share one store (the nodes of a cluster, over a folder all of them see):
each builds in a folder named for its host and process (`.incoming-<host>-<pid>-<random>`),
and an unfinished folder is removed only by its owner, or when the store opens and it is
provably abandoned (its process, on this host, is gone; or it is older than
`STALE_INCOMING_S`).

    <root>/<grant digest>/<snapshot id>/
        manifest.json        who, when, what (written last)
        files/               the session's workspace
        site/                the packages installed into the session
        interpreters/<engine>/  each engine's saved interpreter (`Engine.save_state`)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sandboxes import remove_tree

from .._errors import ArgumentError

logger = logging.getLogger("sandgate.snapshots")

ID_PATTERN = re.compile(r"^snap-[0-9a-f]{16}$")
MANIFEST = "manifest.json"
INCOMING = ".incoming-"
STALE_INCOMING_S = 86_400.0
"""An unfinished folder untouched this long is abandoned whoever made it (a snapshot takes
seconds to minutes)."""
_HOST = socket.gethostname().replace("-", "_")


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot, as its owner sees it.

    Attributes:
        id: `snap-` and 16 hex digits.
        grant: The grant that owns it (only that grant can see or use it).
        label: The owner's label, or "".
        created_at: Unix time it was taken.
        session: The session it was taken from: a run_code session name, or "" for the
            caller's MCP session.
        bytes: Disk it occupies (allocated blocks), files, packages and interpreters.
        files: Entries of the workspace it holds.
        engines: The engines whose interpreter it holds (`wasm`, `container:runsc`, …);
            empty when it holds files only.
        skipped: Workspace entries left out (links, devices, pipes).
        session_id: The full id of the session it was taken from (`named:NAME`,
            `http:ID`; "" in snapshots taken before it was kept): how a cluster finds the
            last snapshot of a session lost with its node.
    """

    id: str
    grant: str
    label: str
    created_at: float
    session: str
    bytes: int
    files: int
    engines: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    session_id: str = ""

    def public(self) -> dict[str, object]:
        """What a client is shown (no grant: it is the caller's own)."""
        data = asdict(self)
        data.pop("grant")
        data.pop("session_id")
        data["engines"] = list(self.engines)
        data["skipped"] = list(self.skipped)
        return data


def engine_folder(key: str) -> str:
    """The folder name of an engine's saved interpreter (`container:runsc` → `container-runsc`)."""
    return key.replace(":", "-")


def check_id(snapshot_id: str, argument: str = "snapshot_id") -> str:
    """`snapshot_id` if it has a snapshot id's shape.

    Raises:
        ArgumentError: it does not.
    """
    if not ID_PATTERN.match(snapshot_id):
        raise ArgumentError(
            argument,
            "a snapshot id such as 'snap-0123456789abcdef' (from snapshot_session or "
            "list_snapshots)",
            repr(snapshot_id[:80]),
        )
    return snapshot_id


class SnapshotStore:
    """The snapshots of every grant on this server, on disk under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._remove_unfinished()

    def _grant_folder(self, grant: str) -> Path:
        return self.root / hashlib.sha256(grant.encode()).hexdigest()[:32]

    def _remove_unfinished(self) -> None:
        """Remove unfinished folders nobody will finish (another server sharing the store
        may be building or deleting one right now: those stay)."""
        for grant_folder in self.root.iterdir():
            if not grant_folder.is_dir():
                continue
            for folder in grant_folder.iterdir():
                finished = not folder.name.startswith(INCOMING) and (folder / MANIFEST).is_file()
                if not finished and _abandoned(folder):
                    logger.info("removing the unfinished snapshot folder %s", folder)
                    remove_tree(folder)

    def incoming(self, grant: str) -> Path:
        """A new, empty folder to build a snapshot of `grant` in (then `commit` or `discard`),
        named for this host and process, its owner."""
        owner = f"{_HOST}-{os.getpid()}-{secrets.token_hex(8)}"
        folder = self._grant_folder(grant) / f"{INCOMING}{owner}"
        folder.mkdir(parents=True, mode=0o700)
        return folder

    def discard(self, folder: Path) -> None:
        """Remove an unfinished snapshot folder."""
        remove_tree(folder)

    def commit(self, folder: Path, info: SnapshotInfo) -> SnapshotInfo:
        """Finish a snapshot built in `folder` (from `incoming`): its manifest is written, then
        the folder takes the snapshot's id as its name."""
        manifest = folder / MANIFEST
        with open(manifest, "x", encoding="utf-8") as out:
            json.dump(asdict(info), out)
            out.flush()
            os.fsync(out.fileno())
        with self._lock:
            folder.rename(self._grant_folder(info.grant) / info.id)
        return info

    @staticmethod
    def new_id() -> str:
        """A fresh snapshot id."""
        return f"snap-{secrets.token_hex(8)}"

    def get(self, grant: str, snapshot_id: str) -> tuple[SnapshotInfo, Path]:
        """The snapshot `snapshot_id` of `grant` and its folder. Another grant's snapshot is
        not found, exactly like one that does not exist.

        Raises:
            ArgumentError: no such snapshot among `grant`'s (or not an id).
        """
        check_id(snapshot_id)
        folder = self._grant_folder(grant) / snapshot_id
        info = self._read(folder)
        if info is None or info.grant != grant:
            raise ArgumentError(
                "snapshot_id",
                "the id of one of your snapshots (list_snapshots lists them)",
                f"{snapshot_id!r}, which is not one of them",
            )
        return info, folder

    def list(self, grant: str) -> list[SnapshotInfo]:
        """`grant`'s snapshots, oldest first."""
        folder = self._grant_folder(grant)
        if not folder.is_dir():
            return []
        found = [self._read(f) for f in folder.iterdir() if ID_PATTERN.match(f.name)]
        return sorted((i for i in found if i is not None), key=lambda i: i.created_at)

    def delete(self, grant: str, snapshot_id: str) -> SnapshotInfo:
        """Remove one of `grant`'s snapshots; what it was.

        Raises:
            ArgumentError: no such snapshot among `grant`'s.
        """
        info, folder = self.get(grant, snapshot_id)
        with self._lock:
            (folder / MANIFEST).unlink(missing_ok=True)  # unfinished from here on
        remove_tree(folder)
        return info

    def last_of(self, grant: str, session_id: str) -> SnapshotInfo | None:
        """The newest of `grant`'s snapshots taken from the session `session_id`."""
        named = session_id.removeprefix("named:") if session_id.startswith("named:") else None
        taken = [
            i
            for i in self.list(grant)
            if i.session_id == session_id or (not i.session_id and named and i.session == named)
        ]
        return taken[-1] if taken else None

    def usage(self, grant: str) -> tuple[int, int]:
        """How many snapshots `grant` keeps and the bytes they occupy."""
        kept = self.list(grant)
        return len(kept), sum(i.bytes for i in kept)

    @staticmethod
    def _read(folder: Path) -> SnapshotInfo | None:
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            data["engines"] = tuple(data["engines"])
            data["skipped"] = tuple(data.get("skipped", ()))
            return SnapshotInfo(**data)
        except (OSError, ValueError, TypeError, KeyError):
            return None


def _abandoned(folder: Path) -> bool:
    """Whether no live writer owns the unfinished `folder`: its process, on this host, is
    gone, or nothing touched it for `STALE_INCOMING_S`."""
    try:
        age = time.time() - folder.stat().st_mtime
    except FileNotFoundError:
        return False  # its owner finished or removed it meanwhile
    if age > STALE_INCOMING_S:
        return True
    parts = folder.name.removeprefix(INCOMING).split("-")
    if not folder.name.startswith(INCOMING) or len(parts) != 3 or parts[0] != _HOST:
        return False  # being deleted, or another host's: only age tells
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def now() -> float:
    """Unix time, for `SnapshotInfo.created_at`."""
    return time.time()
