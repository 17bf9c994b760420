"""Package installs for a session: from the operator's mirror only, or a clear refusal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandboxes import WorkspacePaths

from ._errors import ArgumentError


@dataclass(frozen=True, slots=True)
class Requested:
    """A package a caller asked for: its name and optional exact version."""

    name: str
    pin: str | None


class Installer:
    """Installs allow-listed wheels from a local mirror into a session's `site` folder.

    Args:
        mirror_dir: The mirror built by `sandgate mirror sync`; `None` when none is configured.
        allowlist: The operator's allow-list file.
    """

    def __init__(self, *, mirror_dir: Path | None, allowlist: Path | None) -> None:
        self.mirror_dir = mirror_dir
        self.allowlist = allowlist

    def parse(self, text: str, *, argument: str) -> Requested:
        """Check a requirement's form before anything else sees it.

        Raises:
            ArgumentError: anything but a name with an optional `==` pin.
        """
        name, _, pin = text.strip().partition("==")
        if not name or not all(c.isalnum() or c in "-_." for c in name) or " " in text.strip():
            raise ArgumentError(
                argument,
                "a package name with an optional exact pin, such as 'six' or 'six==1.16.0'",
                repr(text[:80]),
                hint="URLs, paths, VCS references and pip options are refused",
            )
        return Requested(name, pin or None)

    def install(self, requested: Requested, workspace: WorkspacePaths, *, engine: str) -> str:
        """Install `requested` into `workspace.site` and say what was installed.

        Raises:
            RuntimeError: no mirror is configured (nothing is downloaded, ever).
        """
        if self.mirror_dir is None:
            raise RuntimeError(
                "no package mirror is configured on this server, so nothing can be installed "
                "(sandgate never runs pip against the internet). Ask the operator to build one "
                "with `sandgate mirror sync` and name it under `packages.mirror` in the policy"
            )
        raise RuntimeError(f"the package mirror at {self.mirror_dir} is not available yet")
