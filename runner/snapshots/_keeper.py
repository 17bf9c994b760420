"""Snapshots of sessions: take one (the workspace, the installed packages and every engine's
saved interpreter), restore it into a session, fork it into new named sessions, list and
delete them. Every snapshot belongs to the grant that took it; counts and sizes are the
policy's `server:` quotas. The tools (`runner/tools/_snapshots.py`) wrap these behind the
gate, so each operation is decided and audited like any call; this is also the Python API
(`Service.snapshots`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from policies import ServerSettings
from sandboxes import (
    CapabilityMissing,
    CopyOverBudget,
    SandboxError,
    copy_tree,
    disk_usage,
    empty_folder,
)

from .._engines import Engines
from .._errors import RunnerError, ServerLimit
from .._sessions import Session, Sessions
from ._store import SnapshotInfo, SnapshotStore, engine_folder, now

logger = logging.getLogger("sandgate.snapshots")

SLACK_BYTES = 1 << 20
"""Room a restore's copy may take beyond what the snapshot measured (folders' own blocks)."""

Settings = Callable[[], ServerSettings]


class CannotSnapshot(RunnerError):
    """A session's interpreter cannot be saved or restored on one engine.

    Attributes:
        rule: `/engines/<engine key>`.
    """

    def __init__(self, engine: str, message: str) -> None:
        super().__init__(message)
        self.rule = f"/engines/{engine}"


@dataclass(frozen=True, slots=True)
class Restored:
    """A session made from a snapshot.

    Attributes:
        session: The session's name (a run_code session name), or "" for the caller's MCP
            session.
        interpreters: Engines whose saved interpreter the session's next run resumes.
        not_restored: Engines whose interpreter could not be restored, with why (the session
            then starts a new interpreter there).
    """

    session: str
    interpreters: tuple[str, ...]
    not_restored: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict[str, object]:
        return {
            "session": self.session,
            "interpreters": list(self.interpreters),
            "not_restored": dict(self.not_restored),
        }


def _name_of(session: Session) -> str:
    return session.id.removeprefix("named:") if session.id.startswith("named:") else ""


def too_many_forks(held: int, count: int, cap: int) -> ServerLimit:
    """The refusal of a fork of `count` sessions to a grant that holds `held`, `cap` at most
    (`server.max_sessions_per_grant`; a cluster's front ends refuse with it too)."""
    return ServerLimit(
        "max_sessions_per_grant",
        cap,
        held + count,
        f"your client holds {held} sessions and may hold {cap} "
        f"(server.max_sessions_per_grant), so it cannot open {count} more; end sessions you "
        "no longer use (an HTTP DELETE, or let them idle out) or fork fewer",
    )


class SessionSnapshots:
    """Takes, restores, forks, lists and deletes the snapshots of sessions.

    Args:
        store: Where snapshots live.
        sessions: The server's sessions (workspaces).
        engines: The server's engines (their saved interpreters).
        settings: The `server:` settings in force (quotas).
    """

    def __init__(
        self, store: SnapshotStore, sessions: Sessions, engines: Engines, settings: Settings
    ) -> None:
        self.store = store
        self._sessions = sessions
        self._engines = engines
        self._settings = settings

    # -- quotas ---------------------------------------------------------------------------

    def check_room(self, grant: str) -> None:
        """Refuse a new snapshot when `grant` keeps as many as it may.

        Raises:
            ServerLimit: `server.max_snapshots_per_grant` reached.
        """
        limit = self._settings().max_snapshots_per_grant
        count, _bytes = self.store.usage(grant)
        if count >= limit:
            raise ServerLimit(
                "max_snapshots_per_grant",
                limit,
                count + 1,
                f"your client keeps {count} snapshots, the most it may "
                f"(server.max_snapshots_per_grant = {limit}); delete one you no longer need "
                "(delete_snapshot; list_snapshots lists them) and take this one again",
            )

    def check_forks(self, grant: str, info: SnapshotInfo, count: int) -> None:
        """Refuse a fork of `count` sessions that the quotas cannot hold.

        Raises:
            ServerLimit: more than `server.max_forks_per_call`, more sessions than the grant
                may still open, or more disk than the workspaces may still use.
        """
        settings = self._settings()
        if count > settings.max_forks_per_call:
            raise ServerLimit(
                "max_forks_per_call",
                settings.max_forks_per_call,
                count,
                f"a fork may make at most {settings.max_forks_per_call} sessions "
                f"(server.max_forks_per_call), {count} were asked for; fork in several calls",
            )
        held = self._sessions.count(grant)
        if count > settings.max_sessions_per_grant - held:
            raise too_many_forks(held, count, settings.max_sessions_per_grant)
        needed = count * info.bytes
        used = self._sessions.disk_bytes()
        if used + needed > settings.max_workspace_bytes_total:
            raise ServerLimit(
                "max_workspace_bytes_total",
                settings.max_workspace_bytes_total,
                used + needed,
                f"{count} copies of this snapshot's files ({info.bytes} bytes each) would take "
                f"the session workspaces to {used + needed} bytes, more than the server's "
                f"maximum (server.max_workspace_bytes_total = "
                f"{settings.max_workspace_bytes_total}); fork fewer or end sessions",
            )

    # -- operations -----------------------------------------------------------------------

    async def take(
        self, session: Session, *, label: str = "", interpreter: bool = True
    ) -> SnapshotInfo:
        """Snapshot `session`: its workspace, its installed packages and (with
        `interpreter`) every engine's saved interpreter of it.

        Raises:
            ServerLimit: the grant's snapshots would occupy more than
                `server.max_snapshot_bytes_per_grant` (nothing kept).
            CannotSnapshot: an engine holds the session's interpreter and cannot save it.
        """
        grant = session.grant
        limit = self._settings().max_snapshot_bytes_per_grant
        _count, used = self.store.usage(grant)
        room = max(0, limit - used)
        folder = await asyncio.to_thread(self.store.incoming, grant)
        try:
            files = await asyncio.to_thread(_copy_in, session, folder, room, self._over(room))
            engines = await self._save_interpreters(session, folder) if interpreter else ()
            size = (await asyncio.to_thread(disk_usage, folder)).bytes
            if size > room:
                raise self._over(room)(size)
            info = SnapshotInfo(
                id=self.store.new_id(),
                grant=grant,
                label=label,
                created_at=now(),
                session=_name_of(session),
                bytes=size,
                files=files.files,
                engines=engines,
                skipped=files.skipped[:100],
                session_id=session.id,
            )
            return await asyncio.to_thread(self.store.commit, folder, info)
        except BaseException:
            await asyncio.to_thread(self.store.discard, folder)
            raise

    def _over(self, room: int) -> Callable[[int], ServerLimit]:
        limit = self._settings().max_snapshot_bytes_per_grant

        def refuse(size: int) -> ServerLimit:
            return ServerLimit(
                "max_snapshot_bytes_per_grant",
                limit,
                limit - room + size,
                f"this snapshot needs at least {size} bytes of disk and your client's snapshots "
                f"may use {room} more (server.max_snapshot_bytes_per_grant = {limit}); nothing "
                "was kept. Delete snapshots you no longer need, or remove large files from the "
                "session first",
            )

        return refuse

    async def _save_interpreters(self, session: Session, folder: Path) -> tuple[str, ...]:
        saved: list[str] = []
        for key, engine in self._engines.running().items():
            place = folder / "interpreters" / engine_folder(key)
            place.mkdir(parents=True, mode=0o700)
            try:
                if await engine.save_state(session.key, place):
                    saved.append(key)
                    continue
            except CapabilityMissing as exc:
                raise CannotSnapshot(
                    key,
                    f"this session keeps a live interpreter on the {key} engine, which cannot "
                    f"save interpreters ({exc.engine}); nothing was kept. Take the snapshot "
                    "with interpreter: false to keep its files and packages only, or run the "
                    "session on an engine that can (wasm, pyodide, gvisor)",
                ) from exc
            except SandboxError as exc:
                raise CannotSnapshot(
                    key,
                    f"the session's interpreter on the {key} engine could not be saved: {exc}. "
                    "Nothing was kept; take the snapshot with interpreter: false to keep files "
                    "and packages only",
                ) from exc
            await asyncio.to_thread(place.rmdir)
        return tuple(saved)

    async def restore(self, info: SnapshotInfo, folder: Path, session: Session) -> Restored:
        """Make `session` what the snapshot holds: its interpreters end everywhere, its
        workspace and packages are replaced by the snapshot's, and the snapshot's saved
        interpreters become its own (each resumes at the session's next run there)."""
        await self._engines.end_session(session.key)
        used = await asyncio.to_thread(_copy_out, folder, session, info)
        self._sessions.record_usage(session.grant, session.id, used)
        restored: list[str] = []
        refused: dict[str, str] = {}
        for key in info.engines:
            place = folder / "interpreters" / engine_folder(key)
            try:
                engine = await self._engines.get(key)
                await engine.load_state(session.key, session.grant, place)
            except SandboxError as exc:
                logger.warning("snapshot %s: %s not restored: %s", info.id, key, exc)
                refused[key] = str(exc)
                continue
            restored.append(key)
        return Restored(_name_of(session), tuple(restored), refused)

    async def fork(
        self, info: SnapshotInfo, folder: Path, sessions: list[Session]
    ) -> list[Restored]:
        """Restore the snapshot into each of `sessions` (new sessions): independent copies."""
        return [await self.restore(info, folder, s) for s in sessions]


def _copy_in(
    session: Session, folder: Path, room: int, over: Callable[[int], ServerLimit]
) -> _Copied:
    """The session's files and packages into the snapshot folder, within `room` bytes."""
    files, site = folder / "files", folder / "site"
    files.mkdir(mode=0o700)
    site.mkdir(mode=0o700)
    try:
        a = copy_tree(session.workspace.files, files, max_bytes=room, max_files=1 << 20)
        b = copy_tree(
            session.workspace.site, site, max_bytes=max(0, room - a.bytes), max_files=1 << 20
        )
    except CopyOverBudget as exc:
        raise over(exc.bytes) from exc
    return _Copied(a.files, a.skipped + tuple(f"site/{s}" for s in b.skipped))


@dataclass(frozen=True, slots=True)
class _Copied:
    files: int
    skipped: tuple[str, ...]


def _copy_out(folder: Path, session: Session, info: SnapshotInfo) -> int:
    """The snapshot's files and packages into `session` (emptied first); the bytes they use."""
    budget = info.bytes + SLACK_BYTES
    used = 0
    for part, target in (("files", session.workspace.files), ("site", session.workspace.site)):
        empty_folder(target)
        copied = copy_tree(folder / part, target, max_bytes=budget, max_files=1 << 20)
        used += copied.bytes
    return used
