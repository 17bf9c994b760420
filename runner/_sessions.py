"""Sessions and their workspaces: one folder per session, removed when it ends or idles out."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sandboxes import WorkspacePaths

logger = logging.getLogger("sandgate.sessions")

DEFAULT_IDLE_S = 3600.0


@dataclass(slots=True)
class Session:
    """One client session: its id, workspace and when it was last used."""

    id: str
    grant: str
    workspace: WorkspacePaths
    last_used: float


class Sessions:
    """Creates workspaces on first use and removes them when sessions end or idle out.

    Args:
        root: Folder holding every workspace.
        idle_s: Seconds without a call after which a session's workspace is removed.
    """

    def __init__(self, root: Path, *, idle_s: float = DEFAULT_IDLE_S) -> None:
        self._root = root
        self._idle_s = idle_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _folder_name(grant: str, session_id: str) -> str:
        return hashlib.sha256(f"{grant}\x00{session_id}".encode()).hexdigest()[:32]

    def get(self, grant: str, session_id: str) -> Session:
        """The session for (grant, session id), created with an empty workspace on first use."""
        key = f"{grant}\x00{session_id}"
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                base = self._root / self._folder_name(grant, session_id)
                files, site = base / "files", base / "site"
                files.mkdir(parents=True, exist_ok=True, mode=0o700)
                site.mkdir(parents=True, exist_ok=True, mode=0o700)
                session = Session(session_id, grant, WorkspacePaths(files, site), time.time())
                self._sessions[key] = session
            session.last_used = time.time()
            return session

    def end(self, grant: str, session_id: str) -> None:
        """Forget a session and remove its workspace."""
        with self._lock:
            session = self._sessions.pop(f"{grant}\x00{session_id}", None)
        if session is not None:
            shutil.rmtree(session.workspace.files.parent, ignore_errors=True)

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Remove sessions idle longer than `idle_s`; returns their ids."""
        now = time.time() if now is None else now
        with self._lock:
            idle = [k for k, s in self._sessions.items() if now - s.last_used > self._idle_s]
            gone = [self._sessions.pop(k) for k in idle]
        for session in gone:
            shutil.rmtree(session.workspace.files.parent, ignore_errors=True)
            logger.info("session %s idled out; workspace removed", session.id)
        return [s.id for s in gone]

    def close(self) -> None:
        """Remove every workspace (server shutdown)."""
        with self._lock:
            gone = list(self._sessions.values())
            self._sessions.clear()
        for session in gone:
            shutil.rmtree(session.workspace.files.parent, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._sessions)
