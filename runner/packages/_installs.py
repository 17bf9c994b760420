"""Package installs for a session: allow-listed, hash-verified wheels from the local mirror only."""

from __future__ import annotations

import threading
from pathlib import Path

from sandboxes import WorkspacePaths

from .._errors import ArgumentError
from .mirror import (
    AllowList,
    Lock,
    MirrorError,
    Requested,
    RequirementRefused,
    check_allowed,
    install,
    load_allowlist,
    load_lock,
    parse_requirement,
    parse_requirement_list,
)

NO_MIRROR = (
    "no package mirror is configured on this server, so nothing can be installed (sandgate "
    "never runs pip against the internet). Ask the operator to build one with `sandgate mirror "
    "sync` and name it and its allow-list under `packages` in the policy"
)


class InstallRefused(Exception):
    """An install that the allow-list, the mirror or the installer refused; the message says why."""


class Installer:
    """Installs allow-listed wheels from a local mirror into a session's `site` folder.

    Args:
        mirror_dir: The mirror built by `sandgate mirror sync`; `None` when none is configured.
        allowlist: The operator's allow-list file; `None` when none is configured.
    """

    def __init__(self, *, mirror_dir: Path | None, allowlist: Path | None) -> None:
        self.mirror_dir = mirror_dir
        self.allowlist_path = allowlist
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[float, float], AllowList, Lock] | None = None

    def parse(self, text: str, *, argument: str) -> Requested:
        """Check one requirement's form before the gate or any installer sees it.

        Raises:
            ArgumentError: anything but a name with an optional `==` pin.
        """
        try:
            return parse_requirement(text, argument=argument)
        except RequirementRefused as exc:
            raise _argument_error(exc) from None

    def parse_list(self, text: str, *, argument: str) -> tuple[Requested, ...]:
        """Check a space-separated list of requirements (Pyodide's `package` argument).

        Raises:
            ArgumentError: any item is not a name with an optional `==` pin.
        """
        try:
            return parse_requirement_list(text, argument=argument)
        except RequirementRefused as exc:
            raise _argument_error(exc) from None

    def _sources(self) -> tuple[AllowList, Lock, Path]:
        if self.mirror_dir is None or self.allowlist_path is None:
            raise InstallRefused(NO_MIRROR)
        mirror = self.mirror_dir
        stamp = (_mtime(self.allowlist_path), _mtime(mirror / "lock.json"))
        with self._lock:
            if self._loaded is None or self._loaded[0] != stamp:
                try:
                    self._loaded = (stamp, load_allowlist(self.allowlist_path), load_lock(mirror))
                except MirrorError as exc:
                    raise InstallRefused(str(exc)) from exc
            return self._loaded[1], self._loaded[2], mirror

    def install(self, requested: Requested, workspace: WorkspacePaths, *, engine: str) -> str:
        """Install `requested` (and its locked dependencies) into `workspace.site`.

        Returns:
            What was installed, in words.

        Raises:
            InstallRefused: not allowed, not in the mirror, or the mirror's wheel is bad.
        """
        allowlist, lock, mirror = self._sources()
        try:
            check_allowed(requested, allowlist, lock, engine)
            done = install(requested, mirror_dir=mirror, site_dir=workspace.site, engine=engine)
        except MirrorError as exc:
            raise InstallRefused(str(exc)) from exc
        if not done.installed:
            present = ", ".join(done.already_present) or requested.name
            return f"successfully installed package {requested.name} (already present: {present})"
        return (
            f"successfully installed package {requested.name} "
            f"({', '.join(done.installed)}, from the local mirror, hashes verified)"
        )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def _argument_error(exc: RequirementRefused) -> ArgumentError:
    shown = exc.requested if len(exc.requested) <= 80 else exc.requested[:77] + "..."
    return ArgumentError(
        exc.argument,
        "a package name with an optional exact pin, such as 'six' or 'six==1.16.0'",
        f"{shown!r}, refused ({exc.kind}): {exc.reason}",
        hint=exc.suggestion or "",
    )
