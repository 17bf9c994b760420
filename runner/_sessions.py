"""Sessions and their workspaces: one folder per session, capped per grant and in total disk,
removed when it ends or idles out."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from policies import ServerSettings
from sandboxes import WorkspacePaths, remove_tree, session_key

from ._errors import ServerLimit

logger = logging.getLogger("sandgate.sessions")

DEFAULT_IDLE_S = ServerSettings().session_idle_s

Settings = Callable[[], ServerSettings]
"""Where the server limits come from (the policy in force, so a reload applies them)."""


@dataclass(slots=True)
class Session:
    """One client session: its id, workspace, when it was last used and calls using it now."""

    id: str
    grant: str
    workspace: WorkspacePaths
    last_used: float
    busy: int = 0
    disk_bytes: int = 0
    """What its workspace occupied on disk when last measured (after its last run)."""

    @property
    def key(self) -> str:
        """The session's key across grants (engines key its interpreter by it)."""
        return session_key(self.grant, self.id)


_HELD: contextvars.ContextVar[list[Session] | None] = contextvars.ContextVar(
    "sandgate_held_sessions", default=None
)


def too_many_sessions(held: int, cap: int, idle_s: float) -> ServerLimit:
    """The refusal of a new session to a grant that holds `held` sessions, `cap` at most
    (`server.max_sessions_per_grant`; a cluster's front ends refuse with it too)."""
    return ServerLimit(
        "max_sessions_per_grant",
        cap,
        held + 1,
        f"this client already holds {held} sessions, the server's maximum "
        f"(server.max_sessions_per_grant = {cap}); reuse a session (or a named run_code "
        f"session) or wait until one idles out ({idle_s:g} s without a call)",
    )


class Sessions:
    """Creates workspaces on first use and removes them when sessions end or idle out.

    A new session is refused (`ServerLimit`) when its grant already holds
    `max_sessions_per_grant` sessions, or when all workspaces together use more than
    `max_workspace_bytes_total` bytes. A session in use by a call is never reaped.

    Args:
        root: Folder holding every workspace.
        idle_s: Seconds without a call after which a session's workspace is removed;
            `None` takes `session_idle_s` from `settings`.
        settings: The server limits (default: the built-in defaults).
        share: The fraction of `max_workspace_bytes_total` a grant may hold while other
            grants hold sessions (default: `server.grant_share`).
        clock: Unix time source (tests pass a fake clock to idle sessions out).
    """

    def __init__(
        self,
        root: Path,
        *,
        idle_s: float | None = None,
        settings: Settings = ServerSettings,
        share: Callable[[str], float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._root = root
        self._idle_s = idle_s
        self._settings = settings
        self._share = share or (lambda _grant: self._settings().grant_share)
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        """The folder holding every workspace."""
        return self._root

    @property
    def idle_s(self) -> float:
        """Seconds of inactivity after which a session is removed (as configured now)."""
        return self._idle_s if self._idle_s is not None else self._settings().session_idle_s

    @staticmethod
    def _folder_name(grant: str, session_id: str) -> str:
        return hashlib.sha256(f"{grant}\x00{session_id}".encode()).hexdigest()[:32]

    def get(self, grant: str, session_id: str) -> Session:
        """The session for (grant, session id), created with an empty workspace on first use.

        Inside `hold()`, the session counts as in use until the hold ends.

        Raises:
            ServerLimit: a new session would exceed `max_sessions_per_grant` or
                `max_workspace_bytes_total`.
        """
        key = session_key(grant, session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                self._check_room(grant)
                base = self._root / self._folder_name(grant, session_id)
                files, site = base / "files", base / "site"
                files.mkdir(parents=True, exist_ok=True, mode=0o700)
                site.mkdir(parents=True, exist_ok=True, mode=0o700)
                session = Session(session_id, grant, WorkspacePaths(files, site), self._clock())
                self._sessions[key] = session
            session.last_used = self._clock()
            held = _HELD.get()
            if held is not None:
                session.busy += 1
                held.append(session)
            return session

    def _check_room(self, grant: str) -> None:
        settings = self._settings()
        mine = sum(1 for s in self._sessions.values() if s.grant == grant)
        if mine >= settings.max_sessions_per_grant:
            raise too_many_sessions(mine, settings.max_sessions_per_grant, self.idle_s)
        # Measured by descriptor after every run (allocated blocks: `record_usage`); between
        # runs nothing but the runner's own bounded writes changes a workspace.
        used = sum(s.disk_bytes for s in self._sessions.values())
        if used > settings.max_workspace_bytes_total:
            raise ServerLimit(
                "max_workspace_bytes_total",
                settings.max_workspace_bytes_total,
                used,
                f"the session workspaces on this server use {used} bytes, more than its maximum "
                f"(server.max_workspace_bytes_total = {settings.max_workspace_bytes_total}), so "
                "no new session can start now; use an existing session, or retry once idle "
                "sessions have been removed",
            )
        share = self._share(grant)
        held = sum(s.disk_bytes for s in self._sessions.values() if s.grant == grant)
        others = any(s.grant != grant for s in self._sessions.values())
        cap = int(share * settings.max_workspace_bytes_total)
        if others and held > cap:
            raise ServerLimit(
                "grant_share",
                cap,
                held,
                f"this client's sessions use {held} bytes of disk, more than its share "
                f"({share:g} of server.max_workspace_bytes_total = "
                f"{settings.max_workspace_bytes_total}: server.grant_share) while other clients "
                "use the server, so it cannot start a new session now; use or end one of its "
                "sessions (an HTTP DELETE ends one), or free space in them",
            )

    def record_usage(self, grant: str, session_id: str, disk_bytes: int) -> None:
        """What the session's workspace occupies now (measured after a run)."""
        with self._lock:
            session = self._sessions.get(session_key(grant, session_id))
            if session is not None:
                session.disk_bytes = disk_bytes

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Sessions `get` returns inside count as in use (never reaped) until this ends; then
        they count as used at that moment."""
        held: list[Session] = []
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
            now = self._clock()
            with self._lock:
                for session in held:
                    session.busy -= 1
                    session.last_used = now

    def end(self, grant: str, session_id: str) -> Session | None:
        """Forget a session and remove its workspace; the session, if there was one."""
        with self._lock:
            session = self._sessions.pop(session_key(grant, session_id), None)
        if session is not None:
            remove_tree(session.workspace.files.parent)
        return session

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Remove sessions idle longer than `idle_s` (and not in use); returns their keys."""
        now = self._clock() if now is None else now
        idle_s = self.idle_s
        with self._lock:
            idle = [
                k for k, s in self._sessions.items() if s.busy == 0 and now - s.last_used > idle_s
            ]
            gone = [self._sessions.pop(k) for k in idle]
        for session in gone:
            remove_tree(session.workspace.files.parent)
            logger.info("session %s idled out; workspace removed", session.id)
        return [s.key for s in gone]

    def count(self, grant: str) -> int:
        """How many sessions `grant` holds."""
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.grant == grant)

    def exists(self, grant: str, session_id: str) -> bool:
        """Whether `grant` holds the session `session_id`."""
        with self._lock:
            return session_key(grant, session_id) in self._sessions

    def listing(self) -> list[Session]:
        """A copy of every session held now (for the operator console)."""
        with self._lock:
            return [replace(s) for s in self._sessions.values()]

    def disk_bytes(self) -> int:
        """What every workspace occupied on disk when last measured."""
        with self._lock:
            return sum(s.disk_bytes for s in self._sessions.values())

    def held(self) -> list[str]:
        """The keys (`session_key`) of every session held now."""
        with self._lock:
            return list(self._sessions)

    def close(self) -> None:
        """Remove every workspace (server shutdown)."""
        with self._lock:
            gone = list(self._sessions.values())
            self._sessions.clear()
        for session in gone:
            remove_tree(session.workspace.files.parent)

    def __len__(self) -> int:
        return len(self._sessions)
