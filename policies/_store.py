"""The state-store contract (counters and approvals), its value types."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

STALE_RESERVATION_S = 3600.0
"""A reservation neither committed nor rolled back for this long counts as committed."""

STATE_FILE = "state.sqlite3"
AUDIT_FILE = "audit.jsonl"

ApprovalStatus = Literal["pending", "approved", "denied", "used", "expired"]


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """One counter a call reserves against.

    Attributes:
        key: Counter name plus scope, e.g. `pip_install_package_rate|grant=alice`.
        window_s: Sliding window in seconds: entries newer than `now - window_s` count.
        max: Most units allowed inside the window.
        increment: Units this call adds.
    """

    key: str
    window_s: float
    max: int
    increment: int = 1


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """One approval request, bound to one exact call (tool, arguments, grant, session).

    Attributes:
        approval_id: What the human approves or denies.
        binding: sha256 of the call it is bound to (see `approval_binding`).
        tool: The tool, for people reading `sandgate approve` output.
        grant: The caller's grant.
        session: The caller's session.
        args_sha256: sha256 of the canonical JSON arguments.
        status: Stored status: `pending`, `approved`, `denied` or `used`.
        created_at: Unix time of the request.
        expires_at: Unix time after which it is `expired` (unless `used`).
        ttl_s: How long it lives after being created or resolved.
        resolved_by: Who approved or denied it.
    """

    approval_id: str
    binding: str
    tool: str
    grant: str
    session: str
    args_sha256: str
    status: Literal["pending", "approved", "denied", "used"]
    created_at: float
    expires_at: float
    ttl_s: float
    resolved_by: str | None = None

    def status_at(self, now: float) -> ApprovalStatus:
        """The status as seen at `now` (`expired` once past `expires_at`, unless used)."""
        if self.status != "used" and now >= self.expires_at:
            return "expired"
        return self.status


def approval_binding(tool: str, args_sha256: str, grant: str, session: str) -> str:
    """The sha256 that binds an approval to one exact call."""
    text = "\0".join((tool, args_sha256, grant, session))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CounterStore(Protocol):
    """Where counters and approvals live. Every method is atomic across threads and processes.

    Implementations translate their backend's errors into `StateUnavailable` in one place.
    """

    backend: str
    commits_locally: bool
    """True when `commit` only forgets the reservation in this process's memory: it never
    waits on the backend (a lock another process holds, the network), so the server may
    commit on its event loop. A rollback always writes."""

    def reserve(self, items: Sequence[CounterSpec], now: float) -> str | None:
        """Reserve every item, or none: a reservation id when all fit under their `max` in
        their window, else `None`."""
        ...

    def reserve_now(self, items: Sequence[CounterSpec], now: float) -> str | None:
        """`reserve` without waiting, for the server's event loop: raises `WouldWait`, having
        written nothing, where `reserve` would wait (a lock another thread or process holds,
        the network, the backend's upkeep)."""
        ...

    def commit(self, reservation_id: str, *, now: float | None = None) -> None:
        """Make a reservation final (it can no longer be rolled back)."""
        ...

    def rollback(self, reservation_id: str, *, now: float | None = None) -> None:
        """Undo a reservation. A no-op once committed or stale. Only the store (instance)
        that made a reservation is required to be able to undo it."""
        ...

    def used(self, item: CounterSpec, now: float) -> tuple[int, float | None]:
        """Units inside `item`'s window at `now`, and the time of the oldest entry counted."""
        ...

    def add_approval(self, record: ApprovalRecord) -> None:
        """Store a new pending approval."""
        ...

    def find_approval(self, binding: str, now: float) -> ApprovalRecord | None:
        """The newest unexpired pending, approved or denied approval for `binding`."""
        ...

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        """The approval with this id, whatever its status, or `None`."""
        ...

    def resolve_approval(
        self, approval_id: str, approved: bool, by: str, now: float, *, binding: str | None = None
    ) -> ApprovalRecord:
        """Approve or deny a pending approval; it then lives `ttl_s` more.

        Args:
            approval_id: The approval to answer.
            approved: Approve (True) or deny (False).
            by: Who answers (`operator:<name>` or `client:<grant>`).
            now: Unix time of the answer.
            binding: When given, the approval must be bound to it (the answering client's
                exact call); one bound to anything else is treated as unknown. Checked in the
                same transaction as the status.

        Raises:
            UnknownApproval: No pending, unexpired approval has this id (and `binding`).
        """
        ...

    def use_approval(self, approval_id: str, now: float) -> bool:
        """Mark an approved, unexpired approval `used`; `False` if it was not usable."""
        ...

    def close(self) -> None:
        """Release connections. Later calls raise `StateUnavailable`."""
        ...


def state_dir_default() -> Path:
    """`$SANDGATE_HOME`, else `$XDG_STATE_HOME/sandgate`, else `~/.local/state/sandgate`."""
    if os.environ.get("SANDGATE_HOME"):
        return Path(os.environ["SANDGATE_HOME"]).expanduser()
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]).expanduser() / "sandgate"
    return Path.home() / ".local" / "state" / "sandgate"
