"""Who may move a session's files: one call at a time, and only while no other call runs.

A call served by a prepared guest moves the session's files into its worker's slot, so while it
runs they are not in the session folder. Calls of one session can arrive together (HTTP clients
of one grant share its session), so each call enters the session's `Use` first:

- A session with no call in flight lends its files to the call (`moving`); calls that arrive
  meanwhile wait until they are back.
- Otherwise the call shares the folder with the calls in flight and its files stay in place:
  it runs in a guest granted the folder itself, or in a prepared guest when the folder is empty
  (nothing to move in; what it writes is moved out after).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class _Use:
    waiting: list[asyncio.Future[None]] = field(default_factory=list)
    """Calls waiting for the files to come back, each woken (all at once) when a call leaves."""
    sharing: int = 0
    moving: bool = False
    entered: int = 0


class SessionUses:
    """The calls in flight per session folder (one event loop's).

    Leaving is synchronous (no await), so a cancelled call always gives the session back, at
    once and without a task of its own to finish it."""

    def __init__(self) -> None:
        self._uses: dict[Path, _Use] = {}

    @contextlib.asynccontextmanager
    async def enter(self, files: Path, *, wants_to_move: bool) -> AsyncIterator[bool]:
        """Enter a call of the session `files`; yields whether it may move the files."""
        use = self._uses.setdefault(files, _Use())
        use.entered += 1
        moving = counted = False
        try:
            while use.moving:
                woken = asyncio.get_running_loop().create_future()
                use.waiting.append(woken)
                try:
                    await woken
                finally:
                    with contextlib.suppress(ValueError):
                        use.waiting.remove(woken)
            moving = wants_to_move and use.sharing == 0
            if moving:
                use.moving = True
            else:
                use.sharing += 1
            counted = True
            yield moving
        finally:
            if counted:  # even when the call is cancelled: else the session waits forever
                _leave(use, moving)
            use.entered -= 1
            if use.entered == 0:
                del self._uses[files]

    def in_flight(self, files: Path) -> int:
        """Calls of the session that entered and have not left (waiting ones included)."""
        use = self._uses.get(files)
        return 0 if use is None else use.entered


def _leave(use: _Use, moving: bool) -> None:
    if moving:
        use.moving = False
    else:
        use.sharing -= 1
    for woken in use.waiting:
        if not woken.done():
            woken.set_result(None)
