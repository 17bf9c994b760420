"""Mount points of the Mcp Pyodide tools: the session workspace and operator folders."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from policies import RESERVED_MOUNT_NAME, ServerMount, mount_name_problem
from sandboxes import HostMount

from ._errors import ArgumentError, SetupError

WORKSPACE_MOUNT = RESERVED_MOUNT_NAME
WORKSPACE_GUEST_PATH = "/workspace"
OPERATOR_GUEST_ROOT = "/mnt"
_MOUNT_FORM = "NAME=DIR[:ro|:rw]"
_MODES = {"ro": True, "rw": False}


@dataclass(frozen=True, slots=True)
class MountPoint:
    """A folder the mount tools can list and read.

    Attributes:
        name: What clients call it (`mountName`).
        host: The host folder.
        guest: Where code sees it: `/workspace`, or `/mnt/NAME` for an operator mount
            (every engine shows them there).
        read_only: Whether code's changes are kept from the host folder.
    """

    name: str
    host: Path
    guest: str
    read_only: bool

    def describe(self) -> dict[str, object]:
        """What `pyodide_get-mount-points` shows (never the host path)."""
        return {
            "name": self.name,
            "mountPoint": self.guest,
            "readOnly": self.read_only,
            "visibleToCode": True,
        }

    def host_mount(self) -> HostMount:
        """The mount as the engines take it (in the `ExecutionPlan`'s workspace)."""
        return HostMount(self.name, self.host, self.read_only)


def parse_mount(text: str) -> MountPoint:
    """An operator mount from `NAME=DIR`, `NAME=DIR:ro` (both read-only) or `NAME=DIR:rw`.

    Code sees it at `/mnt/NAME`. A DIR whose own name ends in `:something` is taken whole
    when such a folder exists.

    Raises:
        ArgumentError: not `NAME=DIR[:ro|:rw]`, a reserved name, or DIR is not a folder.
    """
    name, sep, folder = text.partition("=")
    if not sep or not folder:
        raise ArgumentError("--mount", _MOUNT_FORM, repr(text))
    expected = mount_name_problem(name)
    if expected is not None:
        raise ArgumentError("--mount", f"{_MOUNT_FORM} with {expected} as NAME", repr(text))
    read_only = True
    head, colon, mode = folder.rpartition(":")
    if colon and "/" not in mode and not Path(folder).expanduser().is_dir():
        if mode not in _MODES:
            raise ArgumentError(
                "--mount",
                f"{_MOUNT_FORM}: the suffix ':ro' (read-only, the default) or ':rw'",
                repr(text),
                hint=f"write {name}={head}:ro or {name}={head}:rw",
            )
        folder, read_only = head, _MODES[mode]
    host = Path(folder).expanduser().resolve()
    if not folder or not host.is_dir():
        raise ArgumentError(
            "--mount",
            "an existing folder as DIR",
            f"{text!r} (no folder {host})",
            hint="create the folder first",
        )
    return MountPoint(name, host, f"{OPERATOR_GUEST_ROOT}/{name}", read_only)


def parse_mounts(texts: Iterable[str]) -> tuple[MountPoint, ...]:
    """Every `--mount` value, names unique.

    Raises:
        ArgumentError: one is malformed (see `parse_mount`) or a NAME is given twice.
    """
    mounts: list[MountPoint] = []
    for text in texts:
        mount = parse_mount(text)
        if any(m.name == mount.name for m in mounts):
            raise ArgumentError("--mount", "each NAME once", repr(text), hint="rename one of them")
        mounts.append(mount)
    return tuple(mounts)


def policy_mounts(entries: Sequence[ServerMount], *, source: str) -> tuple[MountPoint, ...]:
    """The policy's `server.mounts` (names already checked by the policy), each an existing
    folder. `source` names the policy file in errors.

    Raises:
        SetupError: an entry's path is not an existing folder (`setting` names it).
    """
    mounts: list[MountPoint] = []
    for index, entry in enumerate(entries):
        host = Path(entry.path).resolve()
        if not host.is_dir():
            setting = f"server.mounts[{index}].path"
            found = "not a folder" if host.exists() else "no such folder"
            raise SetupError(
                f"policy {source}: {setting}: expected an existing folder, got "
                f"{entry.path!r} ({found}); create the folder or fix the path",
                setting=setting,
            )
        mounts.append(
            MountPoint(entry.name, host, f"{OPERATOR_GUEST_ROOT}/{entry.name}", entry.read_only)
        )
    return tuple(mounts)


def merge_mounts(
    flags: tuple[MountPoint, ...], policy: tuple[MountPoint, ...], *, source: str
) -> tuple[MountPoint, ...]:
    """The `--mount` mounts, then the policy's; `source` names the policy file in errors.

    Raises:
        SetupError: a name is given by both (`setting` names the policy's entry).
    """
    for index, mount in enumerate(policy):
        clash = next((m for m in flags if m.name == mount.name), None)
        if clash is not None:
            setting = f"server.mounts[{index}].name"
            raise SetupError(
                f"mount name {mount.name!r} is given twice: by --mount {clash.name}={clash.host} "
                f"and by {setting} in the policy {source}; each name once: rename or drop one",
                setting=setting,
            )
    return (*flags, *policy)


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
