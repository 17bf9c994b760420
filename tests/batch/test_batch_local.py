"""Batch mode on this machine with the real WASM engine: statuses, clamps, resume, the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from runner import Config
from runner import main as sandgate_main
from runner.batch import BatchSummary, Job, run_batch
from runner.batch._cli import EXIT_OK, EXIT_USAGE
from runner.batch._results import ResultsFile

from .conftest import EVAL_POLICY, by_id, read_results, write_jobs

pytestmark = [pytest.mark.wasm, pytest.mark.slow]

TIGHT_POLICY = """\
version: "1"
default: deny
quotas:
  timeout_s: 1
  memory_mb: 128
  max_code_bytes: 200
tools:
  run_code:
    limits:
      - {counter: tight_runs, window: PT2S, max: 3, scope: grant}
"""


def _config(tmp_path: Path, policy: Path = EVAL_POLICY, workers: int = 2) -> Config:
    return Config(policy_path=policy, state_dir=tmp_path / "state", workers=workers)


def _run(jobs: list[Any], out: Path, config: Config, concurrency: int = 2) -> BatchSummary:
    return run_batch(jobs, out=out, config=config, concurrency=concurrency, progress="off")


def test_a_mixed_batch_gets_one_result_per_job_with_its_status(tmp_path: Path) -> None:
    jobs: list[Any] = [
        {"id": "ok", "code": "print(6 * 7)"},
        {"id": "raises", "code": "1/0"},
        {"id": "spins", "code": "while True: pass", "timeout_s": 1},
        {"id": "match", "code": "print(input()[::-1])", "stdin": "abc", "expected_stdout": "cba"},
        {"id": "differs", "code": "print(1)", "expected_stdout": "2"},
        {"id": "crashes", "code": "1/0", "expected_stdout": ""},
        {"id": "hungry", "code": "x = bytearray(300 * 2**20)", "memory_mb": 64},
        {"id": "bad", "code": "print(1)", "timeout_s": -3},
        {"id": "unknown", "code": "print(1)", "retries": 2},
        ["not", "a", "job"],
        {"id": "ok", "code": "print('a duplicate id: never run')"},
        Job("typed", "print('typed')", expected_stdout="typed\n"),
    ]
    out = tmp_path / "results.jsonl"
    summary = _run(jobs, out, _config(tmp_path))
    lines = read_results(out)
    results = by_id([r for r in lines if r["id"] is not None])
    assert len(lines) == len(jobs) - 1  # the duplicate gets none
    assert {k: r["status"] for k, r in results.items()} == {
        "ok": "ok",
        "raises": "error",
        "spins": "timeout",
        "match": "ok",
        "differs": "ok",
        "crashes": "error",
        "hungry": "memory",
        "bad": "invalid",
        "unknown": "invalid",
        "typed": "ok",
    }
    assert {k: r["passed"] for k, r in results.items() if r["passed"] is not None} == {
        "match": True,
        "differs": False,
        "crashes": False,
        "typed": True,
    }
    assert results["ok"]["stdout"] == "42\n" and results["ok"]["exit_code"] == 0
    assert results["ok"]["usage"]["wall_ms"] > 0
    assert results["raises"]["error"] == "ZeroDivisionError: division by zero"
    assert "ZeroDivisionError" in results["raises"]["stderr"]
    assert "1 s" in results["spins"]["error"]
    assert "67108864" in results["hungry"]["error"]  # the job's 64 MiB, under the policy's 512
    assert "timeout_s" in results["bad"]["error"] and "retries" in results["unknown"]["error"]
    [no_id] = [r for r in lines if r["id"] is None]
    assert (no_id["status"], no_id["line"]) == ("invalid", 10)
    assert (summary.total, summary.written, summary.duplicates, summary.skipped) == (12, 11, 1, 0)
    assert summary.runs == 8  # the invalid jobs and the duplicate never reached a sandbox
    assert (summary.passed, summary.failed) == (2, 2)
    assert summary.statuses == {"ok": 4, "error": 2, "timeout": 1, "memory": 1, "invalid": 3}


def test_the_policy_clamps_and_gates_every_job(tmp_path: Path) -> None:
    policy = tmp_path / "tight.yaml"
    policy.write_text(TIGHT_POLICY)
    jobs = [
        {"id": "long", "code": "while True: pass", "timeout_s": 30},
        {"id": "big", "code": "#" * 500},
        {"id": "roomy", "code": "x = bytearray(300 * 2**20)", "memory_mb": 4096},
        *({"id": f"r{i}", "code": f"print({i})"} for i in range(5)),
    ]
    out = tmp_path / "results.jsonl"
    began = time.monotonic()
    summary = _run(jobs, out, _config(tmp_path, policy))
    results = by_id(read_results(out))
    assert results["long"]["status"] == "timeout" and "1 s" in results["long"]["error"]
    assert results["big"]["status"] == "denied" and "max_code_bytes" in results["big"]["error"]
    assert results["roomy"]["status"] == "memory" and "134217728" in results["roomy"]["error"]
    # 3 runs per 2 s: the rate limit made jobs wait for room instead of failing them.
    assert all(results[f"r{i}"]["status"] == "ok" for i in range(5))
    assert time.monotonic() - began >= 2.0
    assert summary.written == len(jobs)


def test_an_interrupted_batch_resumes_without_running_finished_jobs(tmp_path: Path) -> None:
    jobs = [
        {"id": f"j{i}", "code": f"print({i} * {i})", "expected_stdout": str(i * i)}
        for i in range(8)
    ]
    jobs_file = write_jobs(tmp_path / "jobs.jsonl", jobs)
    out = tmp_path / "results.jsonl"
    first = _run(jobs[:4], out, _config(tmp_path))
    assert (first.written, first.runs) == (4, 4)
    finished = out.read_bytes()
    # A crash while the fifth result was being written leaves a truncated last line.
    fifth = json.dumps({"id": "j4", "status": "ok", "stdout": "16\n"}).encode()
    out.write_bytes(finished + fifth[: len(fifth) // 2])

    second = _run(jobs, out, _config(tmp_path))
    assert (second.skipped, second.written, second.runs) == (4, 4, 4)
    assert out.read_bytes().startswith(finished)  # finished lines untouched, the tail cut
    results = by_id(read_results(out))
    assert sorted(results) == sorted(j["id"] for j in jobs)
    assert all(r["passed"] is True for r in results.values())

    # Once more through the command line: nothing left to run, nothing written.
    before = out.read_bytes()
    argv = ["batch", str(jobs_file), "--out", str(out), "--policy", str(EVAL_POLICY)]
    assert sandgate_main([*argv, "--state-dir", str(tmp_path / "state"), "--no-progress"]) == 0
    assert out.read_bytes() == before


def test_the_command_line_runs_a_jobs_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs_file = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": "a", "code": "print('hi')"}, "{broken", {"id": "b"}]
    )
    out = tmp_path / "out" / "results.jsonl"
    argv = ["batch", str(jobs_file), "--out", str(out), "--policy", str(EVAL_POLICY)]
    argv += ["--state-dir", str(tmp_path / "state"), "--concurrency", "1", "--no-progress"]
    assert sandgate_main(argv) == EXIT_OK
    lines = read_results(out)
    assert [(r["id"], r["status"]) for r in lines if r["id"] == "a"] == [("a", "ok")]
    assert sorted(r["status"] for r in lines) == ["invalid", "ok", "ok"]
    assert "3 results written" in capsys.readouterr().err


def test_the_command_line_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    jobs_file = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "code": "print(1)"}])
    out = tmp_path / "results.jsonl"
    missing = ["batch", str(tmp_path / "missing.jsonl"), "--out", str(out)]
    assert sandgate_main(missing) == EXIT_USAGE
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text("version: '1'\nnot_a_key: 1\n")
    argv = ["batch", str(jobs_file), "--out", str(out), "--policy", str(bad_policy)]
    assert sandgate_main([*argv, "--state-dir", str(tmp_path / "state")]) == EXIT_USAGE
    with ResultsFile(out) as held:
        held.open()
        argv = ["batch", str(jobs_file), "--out", str(out), "--no-progress"]
        assert sandgate_main(argv) == EXIT_USAGE
    assert read_results(out) == []
