"""Batch-mode fixtures: jobs files, results readers, and a tracked two-node local Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import IN_CI
from tests.processes import free_port

EVAL_POLICY = Path(__file__).resolve().parents[2] / "policies" / "eval-harness.yaml"
RAY_IP = "127.0.0.2"
"""A loopback address Ray does not rewrite to the machine's outward address (it does so for
127.0.0.1), so every packet of the test cluster stays on the loopback interface."""
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_initial_delay_ms": "500",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    "RAY_memory_monitor_refresh_ms": "0",
}
OBJECT_STORE_BYTES = 80_000_000
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ray: starts a local Ray cluster (needs the ray package)")


def write_jobs(path: Path, jobs: Sequence[dict[str, Any] | str]) -> Path:
    """A jobs file: a dict becomes a JSON line, a string is written as the line itself."""
    with path.open("w", encoding="utf-8") as handle:
        for job in jobs:
            handle.write((job if isinstance(job, str) else json.dumps(job)) + "\n")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every result line of a results file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def by_id(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Results keyed by id; fails when an id has more than one line."""
    ids = [r["id"] for r in results]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"ids with more than one result: {repeated[:10]}"
    return {r["id"]: r for r in results}


def ray_binary() -> str:
    """The `ray` command beside this interpreter; a skip (a failure in CI) when missing."""
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    try:
        import ray  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        message = "the ray package is not installed (pip install 'sandgate[batch]')"
        if IN_CI:
            pytest.fail(f"{message}; it is required in CI")
        pytest.skip(message)
    return found


@dataclass
class RayCluster:
    """A local cluster of a head node and a second node, each with its own temp folder."""

    ray: str
    root: Path
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{RAY_IP}:{self.port}"

    def start(self) -> None:
        self.port = free_port(RAY_IP)
        self.env = {**os.environ, **RAY_ENV}
        common = [
            f"--node-ip-address={RAY_IP}",
            "--num-cpus=1",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
        ]
        head = [self.ray, "start", "--head", f"--port={self.port}", "--include-dashboard=false"]
        self._run([*head, *common, f"--temp-dir={self.root / 'head'}"])
        second = [self.ray, "start", f"--address={self.address}", *common]
        self._run([*second, f"--temp-dir={self.root / 'second'}"])

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")

    def processes(self, node: str | None = None) -> list[psutil.Process]:
        """Processes of the cluster (of one node: `head` or `second`), with their children."""
        mark = str(self.root / node) if node else str(self.root)
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            if proc.pid == os.getpid() or mark not in " ".join(proc.info["cmdline"] or []):
                continue
            found[proc.pid] = proc
            try:
                found.update({child.pid: child for child in proc.children(recursive=True)})
            except psutil.Error:
                continue
        return list(found.values())

    def kill(self, node: str | None = None) -> int:
        """SIGKILL the processes of a node (or of the whole cluster); returns how many."""
        victims = self.processes(node)
        for proc in victims:
            try:
                proc.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(victims, timeout=STOP_TIMEOUT_S)
        return len(victims)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A started two-node cluster on loopback; every process of it is killed at teardown,
    even when starting or the tests failed (the cluster's processes are found by its own
    temp folder, so no other Ray on the machine is touched)."""
    root = Path(tempfile.mkdtemp(prefix="sg-ray-"))  # short: Ray's socket paths must fit
    cluster = RayCluster(ray_binary(), root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while cluster.processes() and time.monotonic() < deadline:
            cluster.kill()
        left = cluster.processes()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left after teardown: {[p.pid for p in left]}"
