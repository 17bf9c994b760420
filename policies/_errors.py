"""The exceptions of `policies` and the `Problem` value a policy load reports.

    PolicyError
    ├── PolicyLoadError     a policy file (or text) is invalid; `problems` lists every one
    ├── StateUnavailable    the counter/approval store cannot be reached or failed
    ├── UnknownApproval     no pending approval has that id (unknown, expired or resolved)
    ├── ApprovalRefused     a client's answer to an approval was refused; nothing changed
    └── AuditUnavailable    the audit log cannot be opened or written

A denial is not an exception: `Gate.decide` returns `Denied`. These are raised only for
failures a caller would catch (a bad file, a store that is down, a stale approval id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


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


class WouldWait(PolicyError):
    """Deciding now would wait (on a lock, another process, the network or file upkeep); nothing
    was reserved or recorded. `Gate.try_decide` answers None, and the caller decides in a thread
    (`Gate.decide`)."""


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


ApprovalProblem = Literal["operator_only", "no_elicitation", "not_found", "other_call", "answered"]
"""Why a client's answer to an approval was refused (`ApprovalRefused.problem`)."""


class ApprovalRefused(PolicyError):
    """A client's answer to an approval was refused; no approval changed, nothing ran.

    Attributes:
        approval_id: The approval id the client answered (as sent; maybe not its own).
        problem: `operator_only` (the policy's `approvals.by` is `operator`),
            `no_elicitation` (the client did not declare the elicitation capability),
            `not_found` (no approval of the caller's grant has that id), `other_call` (the
            approval was asked for a call with another tool, arguments or session),
            `answered` (it is no longer pending: see `status`).
        by: Who answered (`client:<grant>`).
        differs: For `other_call`: what differs, among `tool`, `arguments`, `session`.
        status: For `answered`: `approved`, `denied`, `used` or `expired`.
        decision_id: The audit id of the refusal.
    """

    def __init__(
        self,
        approval_id: str,
        problem: ApprovalProblem,
        *,
        by: str,
        differs: tuple[str, ...] = (),
        status: str | None = None,
        decision_id: str = "",
    ) -> None:
        self.approval_id = approval_id
        self.problem: ApprovalProblem = problem
        self.by = by
        self.differs = differs
        self.status = status
        self.decision_id = decision_id
        super().__init__(_refusal_text(approval_id, problem, differs, status))

    @property
    def rule(self) -> str:
        """The policy path the refusal comes from: `/approvals/by` or `/approvals`."""
        operator_only = self.problem in ("operator_only", "no_elicitation")
        return "/approvals/by" if operator_only else "/approvals"


def _refusal_text(
    approval_id: str, problem: ApprovalProblem, differs: tuple[str, ...], status: str | None
) -> str:
    shown = repr(approval_id)
    operator = (
        "Repeat the call without an answer to get its approval id, and ask an operator to run "
        "`sandgate approve ID`; then repeat the identical call."
    )
    if problem == "operator_only":
        return (
            f"Your answer to approval {shown} was refused and nothing changed: this server's "
            "policy lets only an operator answer approvals (approvals.by: operator), so a "
            f"client's input response is never an approval. {operator}"
        )
    if problem == "no_elicitation":
        return (
            f"Your answer to approval {shown} was refused and nothing changed: this client did "
            "not declare the `elicitation` capability, so its input responses are not a human's "
            "answer. Use a client that declares elicitation (the human at it is then asked), or: "
            f"{operator}"
        )
    if problem == "not_found":
        return (
            f"Your answer to approval {shown} was refused and nothing changed: your grant has "
            "no approval with this id. Answer only the approval id your own call was given; "
            "repeat the call without an answer to be asked again."
        )
    if problem == "other_call":
        what = " and ".join(differs) or "call"
        return (
            f"Your answer to approval {shown} was refused and nothing changed: that approval "
            f"was asked for another call (another {what}). An approval answers only the exact "
            "call it was asked for; repeat this call without an answer to get its own approval "
            "id."
        )
    return (
        f"Your answer to approval {shown} was refused and nothing changed: it is already "
        f"{status}. Repeat the identical call without an answer (a used or expired approval "
        "is asked for anew; a denied call stays refused)."
    )


class AuditUnavailable(PolicyError):
    """The audit log cannot be opened or written.

    Attributes:
        path: The audit file, or the Redis stream (`redis stream KEY at URL`).
        detail: What the operating system (or Redis) reported.
    """

    def __init__(self, path: Path | str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"cannot write the audit log {path}: {detail}")
