"""A job's result line, and the results file: resumed on open, appended once per job."""

from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, get_args

from ._errors import ResultsFileError

BatchStatus = Literal[
    "ok",
    "error",
    "timeout",
    "memory",
    "output_limit",
    "killed",
    "denied",
    "invalid",
    "infra_error",
]
"""How a job ended: the sandbox statuses of `run_code`, plus `invalid` (a malformed job line)
and `infra_error` (sandgate failed to run it; not the code's fault)."""

STATUSES: frozenset[str] = frozenset(get_args(BatchStatus))


@dataclass(frozen=True, slots=True)
class JobResult:
    """One line of the results file.

    Attributes:
        id: The job's id; `None` only for an `invalid` line whose id could not be read.
        status: How the job ended.
        stdout: What the code printed.
        stderr: What the code wrote to standard error (its traceback on `error`).
        exit_code: The guest's exit status; `None` when it was stopped or never ran.
        passed: `stdout.rstrip() == expected_stdout.rstrip()` for a job that ended `ok`;
            `False` for one that ran and did not; `None` without an expected output, or
            for a job that never ran for a reason of the server's (`infra_error`, `invalid`).
        usage: What the run used (`wall_ms`, `cpu_ms`, `peak_memory_bytes`, ...).
        error: Why it did not end `ok`, in a sentence.
        line: The job's 1-based position in the jobs input.
    """

    id: str | None
    status: BatchStatus
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    passed: bool | None = None
    usage: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    line: int | None = None

    @property
    def key(self) -> str:
        """What makes a result unique in a file: the id, or the line for an id-less one."""
        return key_of(self.id, self.line)

    def to_json(self) -> dict[str, Any]:
        """The result as its JSON line's object."""
        return {
            "id": self.id,
            "status": self.status,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": self.error,
            "usage": dict(self.usage),
            "line": self.line,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> JobResult:
        """The inverse of `to_json` (for results sent back by Ray nodes)."""
        return cls(
            id=raw["id"],
            status=raw["status"],
            stdout=raw.get("stdout") or "",
            stderr=raw.get("stderr") or "",
            exit_code=raw.get("exit_code"),
            passed=raw.get("passed"),
            usage=dict(raw.get("usage") or {}),
            error=raw.get("error"),
            line=raw.get("line"),
        )


def key_of(job_id: str | None, line: int | None) -> str:
    """The dedupe key of a job: its id, or `\\0line:N` when it has none."""
    return job_id if job_id is not None else f"\x00line:{line}"


@dataclass(frozen=True, slots=True)
class Resumed:
    """What an existing results file already holds.

    Attributes:
        done: Keys (ids) that have a result.
        statuses: How many of those ended with each status.
        dropped_tail: Bytes of a truncated last line that were cut off (that job re-runs).
    """

    done: frozenset[str]
    statuses: Mapping[str, int]
    dropped_tail: int


class ResultsFile:
    """The results file of one batch: locked, resumed, then appended one flushed line a job.

    Args:
        path: The JSON-lines results file (created when missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._written: set[str] = set()

    def open(self) -> Resumed:
        """Lock the file, read the results it has, and cut a truncated last line off.

        Raises:
            ResultsFileError: another batch holds the file, or a complete line is not a
                result this command wrote.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ResultsFileError(
                self.path, "another `sandgate batch` is writing it; wait for it or pick another"
            ) from None
        try:
            resumed = self._scan(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._written = set(resumed.done)
        return resumed

    def _scan(self, fd: int) -> Resumed:
        statuses: Counter[str] = Counter()
        done: set[str] = set()
        kept = 0
        tail = 0
        with os.fdopen(os.dup(fd), "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    tail = len(raw)  # a crash mid-write: drop it, that job runs again
                    break
                kept += len(raw)
                if not raw.strip():
                    continue
                result = _parse_line(self.path, number, raw)
                if result.key not in done:
                    done.add(result.key)
                    statuses[result.status] += 1
        if tail:
            os.ftruncate(fd, kept)
        return Resumed(frozenset(done), dict(statuses), tail)

    def write(self, result: JobResult) -> bool:
        """Append `result` as one line and flush it; `False` (nothing written) if its id
        already has a result in the file."""
        if self._fd is None:
            raise RuntimeError("ResultsFile.write called before open() (or after close())")
        if result.key in self._written:
            return False
        data = (json.dumps(result.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written.add(result.key)
        return True

    def close(self) -> None:
        """Release the lock and the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _parse_line(path: Path, number: int, raw: bytes) -> JobResult:
    fix = "remove that line (its job then runs again) or pick another --out file"
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"expected a JSON result line, got: {exc}; {fix}"
        raise ResultsFileError(path, problem, line=number) from exc
    if (
        not isinstance(value, dict)
        or value.get("status") not in STATUSES
        or not isinstance(value.get("id"), str | None)
        or (value.get("id") is None and not isinstance(value.get("line"), int))
    ):
        shown = raw[:80].decode("utf-8", "replace")
        raise ResultsFileError(
            path,
            "expected a result object with `id` and a known `status` "
            f"({', '.join(sorted(STATUSES))}), got {shown!r}; {fix}",
            line=number,
        )
    return JobResult.from_json(value)
