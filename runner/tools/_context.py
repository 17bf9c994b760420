"""What a tool handler may use of the server: its caller, the session, one gated path for
code and one for everything else. Handlers see only this; the `Service` implements it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from policies import NeedsApproval, ToolCall
from sandboxes import Program

from ._outcome import Outcome, Refused, Told

if TYPE_CHECKING:
    from .._mounts import MountPoint
    from .._sessions import Session
    from ..packages import Installer
    from ..snapshots import SessionSnapshots

Approver = Callable[[NeedsApproval], Awaitable[bool | None]]
"""Asks a human about a call (MCP elicitation); True/False is the answer, None: cannot ask."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, and how a human can be asked about the call.

    Attributes:
        grant: The credential's grant name (`local` on stdio).
        session: The MCP session (or connection) id.
        approver: Asks the human over the connection's back-channel (legacy protocol).
        can_ask_input: The client takes `InputRequiredResult` elicitations (2026-07-28).
        answer: The client's answer to an approval, sent with this call (`request_state`
            and `input_responses`): (approval id as sent, or "" when none; approved?).
        elicitation: The client declared the elicitation capability (at initialize, or on
            this request); without it, nothing it sends is taken as a human's answer.
    """

    grant: str = "local"
    session: str = "local"
    approver: Approver | None = None
    can_ask_input: bool = False
    answer: tuple[str, bool] | None = None
    elicitation: bool = False


class Ticket(Protocol):
    """An allowed (or refused) call inside `ToolContext.gated`: settle it once with how it
    ended; a ticket left unsettled is settled `ok` when the block ends, `cancelled` when the
    call was cancelled, and as an infrastructure error (rolled back) when it raised."""

    @property
    def refused(self) -> Refused | None:
        """Why the call may not go on (nothing was counted), or None when it was allowed."""
        ...

    def settle(self, status: str, *, error: str | None = None, outcome: str = "completed") -> None:
        """Record how the call ended (`ok`, `refused`, …): its counters are committed, or
        rolled back with `outcome="refused"` (nothing counted)."""
        ...


class ToolContext(Protocol):
    """The server as a tool handler sees it."""

    @property
    def installer(self) -> Installer: ...

    @property
    def operator_mounts(self) -> tuple[MountPoint, ...]: ...

    @property
    def snapshots(self) -> SessionSnapshots: ...

    def session_of(self, caller: Caller, named: str | None = None) -> Session:
        """The caller's session (or the named one of its grant), made on first use."""
        ...

    def has_session(self, caller: Caller, named: str) -> bool:
        """Whether the caller's grant holds the named session."""
        ...

    def gated(self, call: ToolCall, caller: Caller) -> AbstractAsyncContextManager[Ticket]:
        """Decide `call` (asking a human when the policy wants one), then settle it once
        whatever happens inside the block."""
        ...

    async def run_program(
        self,
        tool: str,
        raw: Mapping[str, Any],
        caller: Caller,
        session: Session,
        program: Program,
        *,
        requested_timeout_s: float | None = None,
        requested_memory_bytes: int | None = None,
        before_run: Callable[[], Told | None] | None = None,
    ) -> Outcome:
        """Gate, run and settle one program; `before_run` (after the allow) may answer
        instead (a `Told`), and then nothing runs."""
        ...

    def engine_kind(self, tool: str) -> str:
        """The engine kind the policy routes `tool`'s code to (for package installs)."""
        ...
