"""Batch mode on a real two-node Ray cluster on loopback: completeness, and a node lost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from runner import Config
from runner.batch import BatchProgress, BatchSummary, run_batch

from .conftest import EVAL_POLICY, RayCluster, by_id, read_results

pytestmark = [pytest.mark.ray, pytest.mark.wasm, pytest.mark.slow]

PER_NODE = 2
"""Jobs in flight on each node (and WASM workers there): the machine has 2 cores."""


SLOW_S = 0.6
"""How long each job of a `slow` range sleeps: long enough that a node killed while it runs
such jobs certainly has some in flight (tiny jobs may all be answered by the time it dies)."""


def _jobs(count: int, slow: range = range(0)) -> list[dict[str, Any]]:
    """Tiny jobs; every 50th spins into its 1 s timeout, every 50th (offset) raises; those
    whose index is in `slow` sleep `SLOW_S` first."""
    jobs: list[dict[str, Any]] = []
    for i in range(count):
        if i % 50 == 7:
            jobs.append({"id": f"j{i}", "code": "while True: pass", "timeout_s": 1})
        elif i % 50 == 3:
            jobs.append({"id": f"j{i}", "code": "1/0"})
        else:
            code = f"print({i}*{i})"
            if i in slow:
                code = f"import time; time.sleep({SLOW_S}); {code}"
            jobs.append({"id": f"j{i}", "code": code, "expected_stdout": str(i * i)})
    return jobs


def _check_complete(jobs: list[dict[str, Any]], out: Path, summary: BatchSummary) -> None:
    results = by_id(read_results(out))  # fails on any id written twice
    assert sorted(results) == sorted(j["id"] for j in jobs)
    for job in jobs:
        result = results[job["id"]]
        if job["code"] == "1/0":
            assert result["status"] == "error", result
        elif "while" in job["code"]:
            assert result["status"] == "timeout", result
        else:
            assert (result["status"], result["passed"]) == ("ok", True), result
    assert summary.written == len(jobs)
    assert summary.statuses.get("infra_error", 0) == 0


def test_a_batch_of_500_runs_on_both_nodes(ray_cluster: RayCluster, tmp_path: Path) -> None:
    jobs = _jobs(500)
    out = tmp_path / "results.jsonl"
    config = Config(policy_path=EVAL_POLICY, state_dir=tmp_path / "state", workers=PER_NODE)
    began = time.monotonic()
    summary = run_batch(
        jobs,
        out=out,
        config=config,
        concurrency=PER_NODE,
        ray_address=ray_cluster.address,
        progress="lines",
    )
    print(f"500 jobs on 2 Ray nodes: {time.monotonic() - began:.1f} s; {summary.describe()}")
    _check_complete(jobs, out, summary)
    assert summary.nodes == 2 and summary.retried == 0


def test_losing_a_node_mid_batch_loses_and_repeats_nothing(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    kill_at = 100
    jobs = _jobs(300, slow=range(kill_at - 2 * PER_NODE, kill_at + 4 * PER_NODE))
    out = tmp_path / "results.jsonl"
    config = Config(policy_path=EVAL_POLICY, state_dir=tmp_path / "state", workers=PER_NODE)
    killed: list[int] = []

    def kill_second_node_at_a_third(progress: BatchProgress) -> None:
        if not killed and progress.done >= kill_at:  # its jobs in flight are slow ones
            killed.append(ray_cluster.kill("second"))

    began = time.monotonic()
    summary = run_batch(
        jobs,
        out=out,
        config=config,
        concurrency=PER_NODE,
        ray_address=ray_cluster.address,
        progress=kill_second_node_at_a_third,
    )
    print(f"300 jobs, a node killed: {time.monotonic() - began:.1f} s; {summary.describe()}")
    assert killed and killed[0] > 0
    _check_complete(jobs, out, summary)
    assert summary.nodes == 2
    assert summary.retried >= 1  # the lost node's jobs in flight ran again on the head
