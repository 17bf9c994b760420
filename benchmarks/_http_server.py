"""Starting and stopping `sandgate serve --transport streamable-http` for the HTTP benchmarks
(benchmarks do not import the test suite's helpers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
REPO = Path(__file__).resolve().parents[1]


def tree_python(tree: Path) -> str:
    """The source tree's own virtualenv interpreter (its own dependencies), else this one."""
    own = tree / ".venv" / "bin" / "python"
    return str(own) if tree != REPO and own.exists() else sys.executable


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    port: int,
    *,
    policy: Path,
    state_dir: str | Path,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    tree: Path = REPO,
) -> subprocess.Popen[bytes]:
    """A server of the source `tree` on `HOST:port` with `policy` (and `env` over this
    process's environment), once it listens (exits the benchmark if it does not within
    `START_TIMEOUT_S`)."""
    argv = [tree_python(tree), "-m", "runner", "serve", "--transport", "streamable-http"]
    argv += ["--host", HOST, "--port", str(port), "--policy", str(policy)]
    argv += ["--state-dir", str(state_dir), *extra]
    environment = {**os.environ, **(env or {}), "PYTHONPATH": str(tree)}
    # `-m` puts the working folder first on the path: the tree's own, so its code is what runs.
    process = subprocess.Popen(argv, env=environment, cwd=tree, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"sandgate serve exited during start-up ({process.returncode})")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"sandgate serve did not listen on {HOST}:{port} in {START_TIMEOUT_S} s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server, killing it if it does not go within `STOP_TIMEOUT_S`."""
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)
