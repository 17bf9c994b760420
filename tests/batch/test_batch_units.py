"""Batch mode without engines: job parsing, the results file, progress, exports."""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

import pytest

import runner.batch
from runner.batch import (
    BatchError,
    BatchProgress,
    Job,
    JobResult,
    ResultsFileError,
    _errors,
    read_jobs_file,
)
from runner.batch._execute import interpret, retry_after
from runner.batch._jobs import parse_job, parse_job_line
from runner.batch._progress import Meter
from runner.batch._results import ResultsFile
from runner.tools import Busy, Failed, Invalid, Ran, Refused
from sandboxes import RunResult, Status, Usage

from .conftest import read_results, write_jobs


def _isort_key(name: str) -> tuple[int, str]:
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def test_exports_are_sorted_and_present() -> None:
    names = runner.batch.__all__
    assert names == sorted(names, key=_isort_key)
    assert all(hasattr(runner.batch, name) for name in names)


def test_every_exception_is_exported_under_one_root_and_drawn() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(_errors, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__ == _errors.__name__
    ]
    doc = _errors.__doc__ or ""
    for cls in classes:
        assert issubclass(cls, BatchError), cls
        assert cls.__name__ in runner.batch.__all__, cls
        assert cls.__name__ in doc, cls


def test_a_full_job_line_parses() -> None:
    raw = {
        "id": "j1",
        "code": "print(input())",
        "timeout_s": 5,
        "stdin": "x",
        "expected_stdout": "x",
        "memory_mb": 256,
    }
    job = parse_job(raw, line=3)
    assert job == Job("j1", "print(input())", 5, "x", "x", 256, line=3)
    assert isinstance(job, Job)
    assert Job.from_json(job.to_json()) == job


@pytest.mark.parametrize(
    ("raw", "job_id", "field"),
    [
        ({"code": "print(1)"}, None, "id"),
        ({"id": "", "code": "1"}, None, "id"),
        ({"id": 7, "code": "1"}, None, "id"),
        ({"id": "a", "code": 3}, "a", "code"),
        ({"id": "a", "timeout_s": 0}, "a", "timeout_s"),
        ({"id": "a", "timeout_s": True}, "a", "timeout_s"),
        ({"id": "a", "timeout_s": "5"}, "a", "timeout_s"),
        ({"id": "a", "memory_mb": 1.5}, "a", "memory_mb"),
        ({"id": "a", "memory_mb": -1}, "a", "memory_mb"),
        ({"id": "a", "stdin": ["x"]}, "a", "stdin"),
        ({"id": "a", "timeout": 5}, "a", "unknown key"),
        ([1, 2], None, "JSON object"),
    ],
)
def test_a_bad_job_becomes_an_invalid_result_naming_the_field(
    raw: object, job_id: str | None, field: str
) -> None:
    result = parse_job(raw, line=9)
    assert isinstance(result, JobResult)
    assert (result.id, result.status, result.line, result.passed) == (job_id, "invalid", 9, None)
    assert result.error is not None and field in result.error


def test_job_lines_blank_non_json_and_non_utf8(tmp_path: Path) -> None:
    assert parse_job_line(b"   \n", line=1) is None
    not_json = parse_job_line(b"{nope", line=2)
    assert isinstance(not_json, JobResult) and not_json.status == "invalid"
    not_utf8 = parse_job_line(b'{"id": "\xff"}', line=3)
    assert isinstance(not_utf8, JobResult) and not_utf8.status == "invalid"
    path = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a"}, "", "oops", {"id": "b"}])
    items = list(read_jobs_file(path))
    assert [type(i).__name__ for i in items] == ["Job", "JobResult", "Job"]
    assert [i.line for i in items] == [1, 3, 4]


def test_job_constructor_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Job("a", "print(1)", timeout_s=-1)


def _result(job_id: str, status: str = "ok") -> JobResult:
    return JobResult(id=job_id, status=status, stdout="1\n", line=1)  # type: ignore[arg-type]


def test_results_file_resumes_and_drops_a_truncated_last_line(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    with ResultsFile(out) as results:
        assert results.open().done == frozenset()
        assert results.write(_result("a"))
        assert results.write(_result("b", "error"))
        assert not results.write(_result("a"))  # once per id
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"id": "c", "status": "o')  # a crash mid-write
    with ResultsFile(out) as results:
        resumed = results.open()
        assert resumed.done == {"a", "b"}
        assert resumed.statuses == {"ok": 1, "error": 1}
        assert resumed.dropped_tail == len(b'{"id": "c", "status": "o')
        assert out.read_bytes() == whole
        assert results.write(_result("c"))
    assert [r["id"] for r in read_results(out)] == ["a", "b", "c"]


def test_results_file_refuses_a_corrupt_complete_line(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text(json.dumps(_result("a").to_json()) + "\nnot a result\n")
    with ResultsFile(out) as results, pytest.raises(ResultsFileError) as caught:
        results.open()
    assert caught.value.line == 2 and caught.value.path == out


def test_results_file_refuses_a_second_writer(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    with ResultsFile(out) as first:
        first.open()
        with ResultsFile(out) as second, pytest.raises(ResultsFileError):
            second.open()


def test_an_id_less_invalid_result_is_keyed_by_its_line(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    invalid = JobResult(id=None, status="invalid", error="x", line=4)
    with ResultsFile(out) as results:
        results.open()
        assert results.write(invalid)
    with ResultsFile(out) as results:
        assert results.open().done == {invalid.key}
        assert not results.write(invalid)


def test_progress_bar_and_lines() -> None:
    stream = io.StringIO()
    meter = Meter("bar", total=4, already=1, stream=stream)
    meter.add(_result("a"))
    meter.add(JobResult(id="b", status="error", passed=False))
    meter.say("hello")
    meter.close()
    text = stream.getvalue()
    assert "\r" in text and "hello\n" in text
    assert "3/4 jobs" in text and "errors 1" in text and "failed 1" in text
    seen: list[BatchProgress] = []
    sink = Meter(seen.append, total=None)
    sink.add(_result("a"))
    assert seen[-1].done == 1 and seen[-1].total is None
    lines = io.StringIO()
    quiet = Meter("off", total=2, stream=lines)
    quiet.add(_result("a"))
    quiet.close()
    assert lines.getvalue() == ""


def _ran(status: Status, stdout: str = "", limit: str | None = None) -> Ran:
    result = RunResult(
        status=status,
        stdout=stdout,
        stderr="",
        exit_code=0 if status == "ok" else None,
        usage=Usage(wall_ms=3.0),
        limit=limit,
    )
    return Ran(result, "wasm")


def test_a_refusal_with_a_hint_or_a_busy_server_waits_the_hinted_time() -> None:
    limited = Refused("/tools/run_code/limits/x", "Rate limit 'x' reached. Retry in 1.5 s.", 1.5)
    assert retry_after(limited) == 1.5
    assert retry_after(Refused("/default", "no")) is None
    assert retry_after(Busy("Error: the server is busy", 2.0)) == 2.0
    assert retry_after(Busy("Error: the server is busy", 600.0)) == 60.0  # bounded
    assert retry_after(Failed("Error: the wasm sandbox failed")) is None
    assert retry_after(_ran("ok")) is None


def test_outcomes_become_result_lines() -> None:
    job = Job("a", "print(1)", expected_stdout="1", line=2)
    ran = interpret(job, _ran("ok", "1\n"))
    assert (ran.id, ran.status, ran.stdout, ran.exit_code, ran.passed, ran.line) == (
        "a",
        "ok",
        "1\n",
        0,
        True,
        2,
    )
    assert ran.usage["wall_ms"] == 3.0
    stopped = interpret(job, _ran("timeout", "1\n", "wall time 1 s"))
    assert (stopped.passed, stopped.error) == (False, "stopped by a limit: wall time 1 s")
    denied = interpret(job, Refused("/default", "no"))
    assert (denied.status, denied.passed, denied.error) == (
        "denied",
        False,
        "denied by policy rule /default: no",
    )
    invalid = interpret(job, Invalid("/arguments/timeout_s", "argument 'timeout_s': …"))
    assert (invalid.status, invalid.passed) == ("invalid", None)
    broken = interpret(job, Failed("Error: sandgate failed"))
    assert (broken.status, broken.passed, broken.error) == (
        "infra_error",
        None,
        "Error: sandgate failed",
    )
