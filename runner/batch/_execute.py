"""Run one job through a `Service`: its own session, the gate, the engine, then a result."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import ArgumentError
from .._service import Service
from ..tools import Busy, Caller, Failed, Invalid, Outcome, Refused, Told
from ..tools._format import structured
from ._errors import BatchError
from ._jobs import Job
from ._results import STATUSES, BatchStatus, JobResult

BATCH_GRANT = "batch"
"""The grant every batch job is decided under (the policy's `scope: grant` counters)."""

TOOL = "run_code"
MAX_RATE_WAIT_S = 3600.0
"""Longest a job waits, in all, for room (the policy's rate limits, a busy server) before its
refusal becomes its result."""
INFRA_ATTEMPTS = 3
"""Runs of a job that failed for the server's reason (`infra_error`) before that is its result."""
INFRA_BACKOFF_S = 0.5
RAN: frozenset[str] = frozenset(STATUSES) - {"denied", "invalid", "infra_error"}
"""Result statuses of runs that reached an engine."""


@dataclass(frozen=True, slots=True)
class Start:
    """How every job's session starts.

    Attributes:
        grant: The grant jobs are decided under (and that owns `from_snapshot`).
        from_snapshot: A snapshot id: every job's session starts from it (files, packages,
            interpreters); None: from nothing.
    """

    grant: str = BATCH_GRANT
    from_snapshot: str | None = None


FROM_NOTHING = Start()
"""Jobs of the grant `batch`, each session starting empty."""


class JobExecutor:
    """Runs jobs on one service, each in a fresh session removed once it is done.

    Args:
        service: An open service (from `open_service`) serving `run_code`.
        grant: The grant the jobs are decided under.
        max_rate_wait_s: Total seconds a job may wait for room under rate limits.
        from_snapshot: Start every job's session from this snapshot of `grant` (its files,
            packages and interpreters), restored through `restore_session` (decided by the
            policy and audited like any call).
    """

    def __init__(
        self,
        service: Service,
        *,
        grant: str = BATCH_GRANT,
        max_rate_wait_s: float = MAX_RATE_WAIT_S,
        from_snapshot: str | None = None,
    ) -> None:
        self.service = service
        self.grant = grant
        self.from_snapshot = from_snapshot
        self.max_rate_wait_s = max_rate_wait_s
        self._runs = 0

    @property
    def runs(self) -> int:
        """Guests started so far (every attempt that reached an engine counts)."""
        return self._runs

    async def run(self, job: Job) -> JobResult:
        """Run `job` and say how it ended; never raises for anything the job holds."""
        args: dict[str, Any] = {"code": job.code}
        if job.timeout_s is not None:
            args["timeout_s"] = job.timeout_s
        if job.stdin is not None:
            args["stdin"] = job.stdin
        if job.memory_mb is not None:
            args["memory_mb"] = job.memory_mb
        waited = 0.0
        failures = 0
        while True:
            outcome = await self._call(args)
            result = interpret(job, outcome)
            if result.status in RAN:
                self._runs += 1
            retry_in = retry_after(outcome)
            if retry_in is not None and waited + retry_in <= self.max_rate_wait_s:
                waited += retry_in
                await asyncio.sleep(retry_in)
                continue
            if result.status == "infra_error" and failures + 1 < INFRA_ATTEMPTS:
                failures += 1
                await asyncio.sleep(INFRA_BACKOFF_S * failures)
                continue
            return result

    def check_snapshot(self) -> None:
        """Refuse to start when `from_snapshot` is not one of the grant's snapshots.

        Raises:
            BatchError: it is not (or is not a snapshot id).
        """
        if self.from_snapshot is None:
            return
        try:
            self.service.snapshots.store.get(self.grant, self.from_snapshot)
        except ArgumentError as exc:
            raise BatchError(
                f"--from-snapshot {self.from_snapshot}: no such snapshot of the grant "
                f"{self.grant!r} in {self.service.snapshots.store.root}. Take one as that grant "
                "(snapshot_session) with the same --state-dir as the server, or pass the grant "
                "that owns it with --grant"
            ) from exc

    async def _call(self, args: Mapping[str, Any]) -> Outcome:
        session = f"batch-{uuid.uuid4().hex}"
        caller = Caller(grant=self.grant, session=session)
        try:
            if self.from_snapshot is not None:
                restored = await self.service.outcome(
                    "restore_session", {"snapshot_id": self.from_snapshot}, caller
                )
                if not isinstance(restored, Told) or restored.is_error:
                    return restored
            return await self.service.outcome(TOOL, args, caller)
        finally:
            await asyncio.to_thread(self.service.sessions.end, self.grant, session)


def retry_after(outcome: Outcome) -> float | None:
    """Seconds to wait before the job is tried again: the policy refused it for a rate limit
    (the gate's `retry_after_s`), or the server had no room for it (nothing was counted);
    `None` for any other outcome."""
    if isinstance(outcome, Busy):
        return _bounded_wait(outcome.retry_after_s)
    if isinstance(outcome, Refused) and outcome.retry_after_s is not None:
        return _bounded_wait(outcome.retry_after_s)
    return None


def _bounded_wait(hint: float) -> float:
    return min(max(hint, 0.1), 60.0)


def interpret(job: Job, outcome: Outcome) -> JobResult:
    """The result line of `job` from how its `run_code` call ended."""
    if isinstance(outcome, Refused):
        why = f"denied by policy rule {outcome.rule}: {outcome.reason}"
        passed = _passed(job, "denied", "")
        return JobResult(id=job.id, status="denied", error=why, line=job.line, passed=passed)
    if isinstance(outcome, Invalid):
        return JobResult(id=job.id, status="invalid", error=outcome.reason, line=job.line)
    if isinstance(outcome, Busy | Failed):
        return JobResult(id=job.id, status="infra_error", error=outcome.reason, line=job.line)
    if isinstance(outcome, Told):  # run_code answers only with a run, but say so if not
        return JobResult(id=job.id, status="infra_error", error=outcome.text, line=job.line)
    result = outcome.result
    status: BatchStatus = result.status
    error = result.error
    if status not in ("ok", "error") and result.limit:
        error = f"stopped by a limit: {result.limit}"
    return JobResult(
        id=job.id,
        status=status,
        stdout=result.stdout,
        stderr=result.stderr,
        exit_code=result.exit_code,
        passed=_passed(job, status, result.stdout),
        usage=structured(result)["usage"],
        error=error,
        line=job.line,
    )


def _passed(job: Job, status: BatchStatus, stdout: str) -> bool | None:
    if job.expected_stdout is None:
        return None
    return status == "ok" and stdout.rstrip() == job.expected_stdout.rstrip()
