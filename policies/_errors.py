"""The exceptions of `policies` and the `Problem` value a policy load reports.

    PolicyError
    ├── PolicyLoadError     a policy file (or text) is invalid; `problems` lists every one
    ├── StateUnavailable    the counter/approval store cannot be reached or failed
    ├── UnknownApproval     no pending approval has that id (unknown, expired or resolved)
    └── AuditUnavailable    the audit log cannot be opened or written

A denial is not an exception: `Gate.decide` returns `Denied`. These are raised only for
failures a caller would catch (a bad file, a store that is down, a stale approval id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem (or warning) found in a policy, with its place in the file.

    Attributes:
        path: The key path inside the policy, e.g. `tools.pip_install_package.limits[0].window`;
            empty for problems of the whole file.
        message: What was expected, what came, and how to fix it.
        line: 1-based line of the offending key or value, when known.
        column: 1-based column, when known.
    """

    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}: " if self.line is not None else ""
        return f"{where}{self.path or '<file>'}: {self.message}"

    def format(self, source: str | Path) -> str:
        """Return `FILE:LINE:COL: path: message` (the position is left out when unknown)."""
        where = f"{source}:{self.line}:{self.column}" if self.line is not None else f"{source}"
        return f"{where}: {self.path or '<file>'}: {self.message}"


class PolicyError(Exception):
    """Root of every exception `policies` raises."""


class PolicyLoadError(PolicyError):
    """A policy is invalid. Nothing of it was loaded.

    Attributes:
        problems: Every problem found, in file order where positions are known.
        source: The file (or `<string>`) the policy came from.
    """

    def __init__(self, problems: list[Problem], *, source: str = "<string>") -> None:
        self.problems = problems
        self.source = source
        shown = "; ".join(p.format(source) for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__(f"invalid policy: {shown}{more}")


class StateUnavailable(PolicyError):
    """The state store (SQLite file or Redis server) cannot be reached or failed.

    Attributes:
        backend: `sqlite` or `redis`.
        detail: What the backend reported.
    """

    def __init__(self, backend: str, detail: str) -> None:
        self.backend = backend
        self.detail = detail
        super().__init__(f"the {backend} state store is unavailable: {detail}")


class UnknownApproval(PolicyError):
    """No pending approval has this id.

    Attributes:
        approval_id: The id that was asked for.
        status: Its status when it exists but cannot be resolved any more
            (`approved`, `denied`, `used`, `expired`); `None` when no such id exists.
    """

    def __init__(self, approval_id: str, status: str | None = None) -> None:
        self.approval_id = approval_id
        self.status = status
        if status is None:
            detail = "no approval has this id; check the id in the agent's message"
        else:
            detail = f"it is already {status}; ask the agent to repeat the call for a new id"
        super().__init__(f"cannot resolve approval {approval_id!r}: {detail}")


class AuditUnavailable(PolicyError):
    """The audit log cannot be opened or written.

    Attributes:
        path: The audit file.
        detail: What the operating system reported.
    """

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"cannot write the audit log {path}: {detail}")
