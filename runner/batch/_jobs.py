"""Batch jobs: the job value type, and reading jobs from mappings and JSON-lines files."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._results import JobResult

JOB_FIELDS = ("id", "code", "timeout_s", "stdin", "expected_stdout", "memory_mb")
"""The keys a job line may have; `id` is the only required one."""


@dataclass(frozen=True, slots=True)
class Job:
    """One program to run in its own session.

    Attributes:
        id: Unique within the batch; the results file is keyed by it.
        code: The Python source.
        timeout_s: Wall-clock seconds; clamped to the policy's ceiling (`None`: the ceiling).
        stdin: The program's standard input.
        expected_stdout: When set, the result says whether stdout matched (after `rstrip`).
        memory_mb: Memory cap in MiB; clamped to the policy's ceiling (`None`: the ceiling).
        line: 1-based position in the jobs input (set by the readers).
    """

    id: str
    code: str = ""
    timeout_s: float | None = None
    stdin: str | None = None
    expected_stdout: str | None = None
    memory_mb: int | None = None
    line: int | None = None

    def __post_init__(self) -> None:
        problem = _check(self)
        if problem is not None:
            raise ValueError(f"Job(id={self.id!r}): {problem}")

    def to_json(self) -> dict[str, Any]:
        """The job as a JSON object (what a job line holds, plus `line`)."""
        return {
            "id": self.id,
            "code": self.code,
            "timeout_s": self.timeout_s,
            "stdin": self.stdin,
            "expected_stdout": self.expected_stdout,
            "memory_mb": self.memory_mb,
            "line": self.line,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Job:
        """The inverse of `to_json`."""
        return cls(**{k: raw[k] for k in (*JOB_FIELDS, "line") if k in raw})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(job: Job) -> str | None:
    """What is wrong with a job's fields, as `field: expected …, got …`; `None` if nothing."""
    if not isinstance(job.id, str) or not job.id:
        return f"id: expected a non-empty string, got {job.id!r}"
    if not isinstance(job.code, str):
        return f"code: expected a string of Python source, got {type(job.code).__name__}"
    timeout = job.timeout_s
    if timeout is not None and not (_is_number(timeout) and math.isfinite(timeout) and timeout > 0):
        return f"timeout_s: expected a number of seconds above 0, got {timeout!r}"
    for name in ("stdin", "expected_stdout"):
        value = getattr(job, name)
        if value is not None and not isinstance(value, str):
            return f"{name}: expected a string, got {type(value).__name__}"
    memory = job.memory_mb
    if memory is not None and (
        not isinstance(memory, int) or isinstance(memory, bool) or memory <= 0
    ):
        return f"memory_mb: expected a whole number of MiB above 0, got {memory!r}"
    return None


def invalid(job_id: str | None, line: int | None, problem: str) -> JobResult:
    """The result of a job that cannot run as written."""
    return JobResult(id=job_id, status="invalid", error=problem, line=line)


def parse_job(raw: object, *, line: int | None) -> Job | JobResult:
    """A job from a decoded job line, or the `invalid` result saying what is wrong with it."""
    if isinstance(raw, Job):
        return raw if raw.line is not None or line is None else _with_line(raw, line)
    if not isinstance(raw, Mapping):
        return invalid(None, line, f"expected a JSON object (a job), got {type(raw).__name__}")
    job_id = raw.get("id")
    usable_id = job_id if isinstance(job_id, str) and job_id else None
    if usable_id is None:
        return invalid(None, line, f"id: expected a non-empty string, got {job_id!r}")
    unknown = sorted(str(k) for k in raw if k not in JOB_FIELDS)
    if unknown:
        return invalid(
            usable_id,
            line,
            f"unknown key(s) {', '.join(unknown)}; a job has only {', '.join(JOB_FIELDS)}",
        )
    fields = {k: raw[k] for k in JOB_FIELDS if k in raw and raw[k] is not None}
    try:
        return Job(**fields, line=line)
    except (TypeError, ValueError) as exc:
        return invalid(usable_id, line, str(exc).removeprefix(f"Job(id={usable_id!r}): "))


def _with_line(job: Job, line: int) -> Job:
    return Job(job.id, job.code, job.timeout_s, job.stdin, job.expected_stdout, job.memory_mb, line)


def parse_job_line(text: bytes | str, *, line: int) -> Job | JobResult | None:
    """A job from one line of a jobs file; `None` for a blank line."""
    try:
        decoded = text.decode("utf-8") if isinstance(text, bytes) else text
    except UnicodeDecodeError as exc:
        return invalid(None, line, f"expected UTF-8 text, got bytes that are not: {exc}")
    if not decoded.strip():
        return None
    try:
        raw = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return invalid(None, line, f"expected one JSON object on the line, got: {exc}")
    return parse_job(raw, line=line)


def read_jobs_file(path: Path) -> Iterator[Job | JobResult]:
    """The jobs of a JSON-lines file, lazily; malformed lines come as `invalid` results."""
    with path.open("rb") as handle:
        for number, text in enumerate(handle, start=1):
            parsed = parse_job_line(text, line=number)
            if parsed is not None:
                yield parsed


def count_jobs(path: Path) -> int:
    """How many non-blank lines a jobs file has (the progress bar's total)."""
    with path.open("rb") as handle:
        return sum(1 for text in handle if text.strip())
