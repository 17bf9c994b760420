"""How a tool call ended, as data: what the MCP formatter turns into a tool result and what
`sandgate batch` reads directly (so a hint such as `retry_after_s` reaches both)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandboxes import Image, RunResult

from ._fit import Shown


@dataclass(frozen=True, slots=True)
class Ran:
    """The code ran, to whatever end (`result.status`: ok, error or the limit that stopped it).

    Attributes:
        result: How the run ended, as the model gets it (printed text and images fitted to
            the result's budget: `runner/tools/_fit.py`).
        engine: The engine that ran it (`wasm`, `pyodide`, `container:runsc`, …).
        shown: The streams saved whole and the notes on what was cut or scaled.
    """

    result: RunResult
    engine: str
    shown: Shown = field(default_factory=Shown)


@dataclass(frozen=True, slots=True)
class Told:
    """The tool's own answer, with no code run: an install report, a listing, an image read
    from a mount, or why a file could not be run.

    Attributes:
        text: The answer.
        is_error: Whether the client should take it as an error.
        images: Images to send with it.
        data: Structured content, for tools that give it.
    """

    text: str
    is_error: bool = False
    images: tuple[Image, ...] = ()
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """The policy refused the call (or the approval it needed); nothing ran, nothing counted.

    Attributes:
        rule: The deciding rule (`/tools/run_code/limits/calls`, `/engines/wasm`, …).
        reason: A sentence for the agent: what was refused and what to do.
        retry_after_s: For a rate limit: seconds until the call could fit again.
    """

    rule: str
    reason: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """The call itself was wrong (an argument, an unknown tool, a server limit); refused
    before the policy was asked, audited, nothing counted.

    Attributes:
        rule: `/arguments/NAME`, `/tools` or `/server/SETTING`.
        reason: What was expected, what came, what to do.
    """

    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Busy:
    """The server had no room for the run now; nothing ran, nothing counted.

    Attributes:
        reason: What was full.
        retry_after_s: A suggested wait before retrying.
    """

    reason: str
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The server failed (an engine, the workspace, an internal error), not the code; nothing
    was counted against the caller's limits.

    Attributes:
        reason: What failed, for the agent (no internals).
    """

    reason: str


Outcome = Ran | Told | Refused | Invalid | Busy | Failed
"""How one tool call ended."""
