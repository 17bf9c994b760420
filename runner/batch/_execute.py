"""Run one job through a `Service`: its own session, the gate, the engine, then a result."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

import mcp_types as types

from .._service import Caller, Service
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


class JobExecutor:
    """Runs jobs on one service, each in a fresh session removed once it is done.

    Args:
        service: An open service (from `open_service`) serving `run_code`.
        grant: The grant the jobs are decided under.
        max_rate_wait_s: Total seconds a job may wait for room under rate limits.
    """

    def __init__(
        self,
        service: Service,
        *,
        grant: str = BATCH_GRANT,
        max_rate_wait_s: float = MAX_RATE_WAIT_S,
    ) -> None:
        self.service = service
        self.grant = grant
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
            answer = await self._call(args)
            result = interpret(job, answer)
            if result.status in RAN:
                self._runs += 1
            retry_in = rate_limited(answer) or busy(answer)
            if retry_in is not None and waited + retry_in <= self.max_rate_wait_s:
                waited += retry_in
                await asyncio.sleep(retry_in)
                continue
            if result.status == "infra_error" and failures + 1 < INFRA_ATTEMPTS:
                failures += 1
                await asyncio.sleep(INFRA_BACKOFF_S * failures)
                continue
            return result

    async def _call(self, args: Mapping[str, Any]) -> types.CallToolResult:
        session = f"batch-{uuid.uuid4().hex}"
        try:
            return await self.service.call_tool(
                TOOL, args, Caller(grant=self.grant, session=session)
            )
        finally:
            await asyncio.to_thread(self.service.sessions.end, self.grant, session)


def rate_limited(answer: types.CallToolResult) -> float | None:
    """Seconds to wait when the policy refused the call for a rate limit; else `None`."""
    payload = answer.structured_content or {}
    if payload.get("status") != "denied" or "/limits/" not in str(payload.get("rule", "")):
        return None
    return _bounded_wait(payload.get("retry_after_s"))


def busy(answer: types.CallToolResult) -> float | None:
    """Seconds to wait when the server had no room for the run (nothing was counted)."""
    payload = answer.structured_content or {}
    if payload.get("status") != "busy":
        return None
    return _bounded_wait(payload.get("retry_after_s"))


def _bounded_wait(hint: Any) -> float:
    wait = float(hint) if isinstance(hint, int | float) else 1.0
    return min(max(wait, 0.1), 60.0)


def _text(answer: types.CallToolResult) -> str:
    return "\n".join(b.text for b in answer.content if isinstance(b, types.TextContent))


def interpret(job: Job, answer: types.CallToolResult) -> JobResult:
    """The result line of `job` from `run_code`'s answer."""
    payload = answer.structured_content
    if payload is None or payload.get("status") not in STATUSES:
        return JobResult(id=job.id, status="infra_error", error=_text(answer), line=job.line)
    status: BatchStatus = payload["status"]
    if status == "denied":
        error = f"denied by policy rule {payload.get('rule')}: {payload.get('reason')}"
        return JobResult(
            id=job.id, status=status, error=error, line=job.line, passed=_passed(job, status, "")
        )
    stdout = str(payload.get("stdout") or "")
    error = payload.get("error")
    if status not in ("ok", "error") and payload.get("limit"):
        error = f"stopped by a limit: {payload['limit']}"
    return JobResult(
        id=job.id,
        status=status,
        stdout=stdout,
        stderr=str(payload.get("stderr") or ""),
        exit_code=payload.get("exit_code"),
        passed=_passed(job, status, stdout),
        usage=dict(payload.get("usage") or {}),
        error=error,
        line=job.line,
    )


def _passed(job: Job, status: BatchStatus, stdout: str) -> bool | None:
    if job.expected_stdout is None:
        return None
    return status == "ok" and stdout.rstrip() == job.expected_stdout.rstrip()
