"""`dockerd` restarts while the container engine is idle (its warm container dies with it).

The test runs its own `dockerd` (own socket, data root, exec root and pid file; no bridge, no
iptables; in a network namespace of its own, since a dockerd started with `--bridge=none`
deletes the host's `docker0` bridge, which the main daemon's builds and containers need) so
that restarting it cannot disturb anything else on the machine, loads the sandbox
image into it from the main daemon, and stops it and removes everything it made at the end.
The next call after the restart either works or fails with a clear, uncounted infrastructure
error; the one after works.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import mcp_types as types
import pytest

from sandboxes import Engine, WasmEngine
from tests.results import text_of

from .conftest import Stack, fault_policy, require, stack

pytestmark = [pytest.mark.anyio, pytest.mark.container, pytest.mark.slow]

IMAGE = "sandgate-python:latest"
DAEMON_WAIT_S = 90.0


class PrivateDockerd:
    """A `dockerd` of this test's own, restartable."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "docker.sock"
        self.host = f"unix://{self.socket}"
        config = folder / "daemon.json"
        shared = Path("/etc/docker/daemon.json")
        runtimes = json.loads(shared.read_text()).get("runtimes", {}) if shared.exists() else {}
        config.write_text(json.dumps({"runtimes": runtimes}))
        self.argv = [
            "unshare",
            "--net",
            "dockerd",
            "--config-file",
            str(config),
            "--data-root",
            str(folder / "data"),
            "--exec-root",
            str(folder / "exec"),
            "--pidfile",
            str(folder / "docker.pid"),
            "--host",
            self.host,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.log = (folder / "dockerd.log").open("ab")

    def docker(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.host, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + DAEMON_WAIT_S
        while self.docker("info", timeout_s=30).returncode != 0:
            assert self.process.poll() is None, f"dockerd exited: {self.tail()}"
            assert time.monotonic() < deadline, f"dockerd did not answer: {self.tail()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=DAEMON_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self) -> str:
        self.log.flush()
        return (self.folder / "dockerd.log").read_text(errors="replace")[-3000:]

    def destroy(self) -> None:
        """Remove its containers, stop it, unmount what it left mounted, delete its folder."""
        try:
            if self.process is not None and self.process.poll() is None:
                found = self.docker("ps", "-aq").stdout.split()
                if found:
                    self.docker("rm", "-f", *found)
        finally:
            self.stop()
            self.log.close()
            root = str(self.folder.resolve())
            with open("/proc/self/mounts") as mounts:
                points = [line.split()[1] for line in mounts if line.split()[1].startswith(root)]
            for point in sorted(points, key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def private_dockerd() -> Iterator[PrivateDockerd]:
    require(shutil.which("dockerd") is not None, "dockerd is not installed")
    require(os.geteuid() == 0, "running a dockerd needs root")
    main = subprocess.run(
        ["docker", "image", "inspect", IMAGE], capture_output=True, timeout=60, check=False
    )
    require(main.returncode == 0, f"the main daemon has no {IMAGE} (scripts/docker-setup.sh)")
    daemon = PrivateDockerd(Path(tempfile.mkdtemp(prefix="sgd-", dir="/tmp")))
    try:
        daemon.start()
        loaded = subprocess.run(
            f"docker save {IMAGE} | docker -H {daemon.host} load",
            shell=True,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert loaded.returncode == 0, loaded.stderr
        yield daemon
    finally:
        daemon.destroy()


@asynccontextmanager
async def _restarted(
    daemon: PrivateDockerd, wasm: WasmEngine, folder: Path
) -> AsyncIterator[tuple[Stack, types.CallToolResult]]:
    """A server on a container engine of `daemon`, which restarted while the engine was idle
    with a warm container; yields it and its first call after the restart."""
    from sandboxes.container import ContainerEngine

    engine = ContainerEngine(
        runtime="runc", pool_size=1, pool_dir=folder / "pool", docker_host=daemon.host
    )
    async with engine:
        engines: dict[str, Engine] = {"wasm": wasm, "container:runc": engine}
        async with stack(folder, fault_policy(engine="container", max_runs=10), engines) as live:
            first = await live.run("import sys; print(sys.platform)")
            assert not first.is_error, text_of(first)
            assert await engine.wait_warm(90), "the pool did not warm a container"
            await asyncio.to_thread(daemon.restart)
            yield live, await live.run("print(2)")


async def test_after_a_dockerd_restart_the_next_call_works_or_fails_clearly_then_all_work(
    private_dockerd: PrivateDockerd, wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    async with _restarted(private_dockerd, wasm_engine, tmp_path) as (live, second):
        if second.is_error:  # retried on a fresh container; only a daemon still down fails it
            text = text_of(second)
            assert "container sandbox failed" in text and "nothing was counted" in text, text
        third = await live.run("print(3)")
        assert not third.is_error, text_of(third)
        assert (third.structured_content or {})["stdout"].strip() == "3"
        fourth = await live.run("print(4)")
        assert not fourth.is_error, text_of(fourth)


async def test_a_call_that_met_a_container_killed_by_the_restart_is_not_counted(
    private_dockerd: PrivateDockerd, wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    async with _restarted(private_dockerd, wasm_engine, tmp_path) as (live, second):
        if second.is_error:
            text = text_of(second)
            assert "container sandbox failed" in text and "nothing was counted" in text, text
            assert live.units() == 1
        else:
            assert live.units() == 2
