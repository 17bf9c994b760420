"""Mount points of the Mcp Pyodide tools: the session workspace and operator folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._errors import ArgumentError

WORKSPACE_MOUNT = "workspace"
WORKSPACE_GUEST_PATH = "/workspace"


@dataclass(frozen=True, slots=True)
class MountPoint:
    """A folder the mount tools can list and read.

    Attributes:
        name: What clients call it (`mountName`).
        host: The host folder.
        guest: Where code sees it (`/workspace`); operator mounts are not visible to code.
        read_only: Whether code may write it.
    """

    name: str
    host: Path
    guest: str | None
    read_only: bool

    def describe(self) -> dict[str, object]:
        """What `pyodide_get-mount-points` shows (never the host path)."""
        return {
            "name": self.name,
            "mountPoint": self.guest,
            "readOnly": self.read_only,
            "visibleToCode": self.guest is not None,
        }


def parse_mount(text: str) -> MountPoint:
    """An operator mount from `NAME=DIR` (read-only; `:rw` is refused: code never writes it).

    Raises:
        ArgumentError: not `NAME=DIR`, a reserved name, or DIR is not a folder.
    """
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder or not name.replace("-", "").replace("_", "").isalnum():
        raise ArgumentError("--mount", "NAME=DIR with a name of letters, digits, - and _", text)
    if name == WORKSPACE_MOUNT:
        raise ArgumentError("--mount", f"a name other than '{WORKSPACE_MOUNT}' (reserved)", text)
    host = Path(folder.removesuffix(":ro")).expanduser().resolve()
    if not host.is_dir():
        raise ArgumentError("--mount", "an existing folder", f"{text} (no folder {host})")
    return MountPoint(name, host, None, True)


def session_mounts(files: Path, operator: tuple[MountPoint, ...]) -> list[MountPoint]:
    """The mount points one session sees: its workspace first, then the operator's."""
    return [MountPoint(WORKSPACE_MOUNT, files, WORKSPACE_GUEST_PATH, False), *operator]


def find_mount(mounts: list[MountPoint], name: str) -> MountPoint:
    """The mount called `name`.

    Raises:
        ArgumentError: no such mount; the message lists the ones there are.
    """
    for mount in mounts:
        if mount.name == name:
            return mount
    names = ", ".join(m.name for m in mounts)
    raise ArgumentError("mountName", f"one of the mount names ({names})", repr(name))
