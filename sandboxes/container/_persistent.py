"""Persistent interpreters of the container engine: one live interpreter container per session.

For `ExecutionPlan.state == "persistent"` a session's runs share one container, held in the
engine's `LiveSessions` (one per session key, never shared, bounded, reclaimed when idle). Its
first run takes a warm pool container (or starts one) and sends a request with `persistent`:
the container's server then keeps its child, and the child its `__main__` module, for the next
request (`sandgate_server.py`, protocol 3). Between runs the container idles with an empty
slot: the session's files are lent to it for each run and given back after, exactly as for a
fresh run, so other calls see the session folder between runs.

Every limit stays per call: the deadline and the output cap end the run (and, with it, the
container); memory and processes are the container's cgroup limits, CPU time and the file-size
cap the interpreter's own limits, set for each run. What the container was created with (its
`Shape`: memory, pids, CPU share, operator mounts) and the file-size ceiling its interpreter
fixed at its first run (the workspace budget) cannot change: a run with other limits ends it
and starts another (`LIMITS_CHANGED`). A run stopped by a limit, or whose interpreter died,
ends the container, and the session's next run says why (`lost_note`); an ordinary error (an
exception, `sys.exit`) keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .._live import PROCESS_DIED, stopped_by
from .._types import Limits, RunResult
from ._pool import Warm
from ._spec import Shape

DEFAULT_MAX_SESSIONS = 8
"""Live interpreter containers one engine keeps at most (each holds its memory limit)."""
DEFAULT_SESSION_IDLE_S = 600.0
"""Seconds a session's interpreter container may stay unused before it is removed."""

Identity = tuple[Shape, int]
"""What a live container cannot change: its shape and its interpreter's file-size ceiling."""


@dataclass(slots=True)
class LiveContainer:
    """A session's interpreter container.

    Attributes:
        warm: The container and its slot (None when it mounts the session's folders).
        identity: What it was made for (`identity`).
        gone: Its container was removed already (a run that failed disposed of it).
        resume: Set once it was saved (`_saved.py`): the checkpoint stopped its container,
            and its next run starts a new one from this folder.
    """

    warm: Warm
    identity: Identity
    gone: bool = False
    resume: Path | None = None


def identity(shape: Shape, limits: Limits) -> Identity:
    """What a container serving `limits` with `shape` is fixed to."""
    return shape, limits.workspace_bytes


def lost_note(result: RunResult, *, kept: bool) -> str | None:
    """Why a persistent run's interpreter cannot serve the session's next run (None: it can):
    `kept` says whether the server kept its child after the run."""
    if result.limit is not None:
        return stopped_by(result.limit)
    return None if kept else PROCESS_DIED
