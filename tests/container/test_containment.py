"""What code in a container cannot do, checked from the host: network, files, secrets, limits."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import textwrap
import time
from collections.abc import Iterator

import pytest

from sandboxes import Limits, WorkspacePaths, workspace_limit
from sandboxes.container import ContainerEngine
from tests.container.conftest import Tracker, make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.container]

SIOCGIFADDR = 0x8915
SECRET_NAME = "SANDGATE_TEST_SECRET"


def _bridge_address() -> str | None:
    """The host's address on Docker's default bridge (docker0), if the daemon made one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", b"docker0"))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on every host address (loopback and the Docker bridge included)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _probe(code: str) -> str:
    return textwrap.dedent(code).replace("\n    ", "\n")


async def test_no_network_to_host_loopback_or_bridge(
    engine: ContainerEngine, workspace: WorkspacePaths, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    bridge = _bridge_address()
    # Only addresses of this machine: the sandbox must reach none of them.
    targets = ["127.0.0.1", *([bridge] if bridge else [])]
    code = textwrap.dedent(
        f"""
        import json, socket
        seen = {{}}
        for host in {targets!r}:
            s = socket.socket()
            s.settimeout(3)
            try:
                s.connect((host, {port}))
                seen[host] = "connected"
            except OSError as exc:
                seen[host] = type(exc).__name__
        try:
            socket.getaddrinfo("pypi.org", 443)
            seen["dns"] = "resolved"
        except OSError as exc:
            seen["dns"] = type(exc).__name__
        seen["interfaces"] = sorted(name for _, name in socket.if_nameindex())
        print(json.dumps(seen))
        """
    )
    result = await engine.run(make_plan(workspace, code))
    assert result.status == "ok", result.stderr
    seen = json.loads(result.stdout)
    assert all(seen[host] != "connected" for host in targets), seen
    assert seen["dns"] != "resolved" and seen["interfaces"] == ["lo"], seen
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing reached the host's listener


async def test_root_is_read_only_and_only_tmp_and_workspace_are_writable(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    code = textwrap.dedent(
        """
        import json
        seen = {}
        for path in ["/etc/passwd-x", "/opt/sandgate/x", "/usr/lib/x", "/x", "/tmp/x",
                     "/workspace/x", "/site/x", "/dev/shm/x"]:
            try:
                with open(path, "w") as f:
                    f.write("x")
                seen[path] = "written"
            except OSError as exc:
                seen[path] = type(exc).__name__
        print(json.dumps(seen))
        """
    )
    result = await engine.run(make_plan(workspace, code))
    seen = json.loads(result.stdout)
    written = {path for path, what in seen.items() if what == "written"}
    assert written <= {"/tmp/x", "/workspace/x", "/dev/shm/x"}, seen
    assert {"/tmp/x", "/workspace/x"} <= written
    assert (workspace.files / "x").read_text() == "x"


async def test_no_docker_socket_no_secrets_no_privileges(
    engine: ContainerEngine, workspace: WorkspacePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"s3cret-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv(SECRET_NAME, secret)
    code = textwrap.dedent(
        """
        import ctypes, json, os
        PR_GET_NO_NEW_PRIVS = 39
        libc = ctypes.CDLL(None, use_errno=True)
        lines = open("/proc/self/status").read().splitlines()
        status = dict(line.split(":\\t", 1) for line in lines if ":\\t" in line)
        sockets = ("/var/run/docker.sock", "/run/docker.sock")
        try:
            with open("/proc/1/environ", "rb") as f:
                server_environ = f.read().decode(errors="replace")
        except PermissionError:  # the server is not dumpable under runc
            server_environ = ""
        print(json.dumps({
            "sockets": [p for p in sockets if os.path.exists(p)],
            "environ": dict(os.environ),
            "server_environ": server_environ,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "cap_eff": status["CapEff"].strip(),
            # the syscall, not /proc/self/status: gVisor's status has no NoNewPrivs line
            "no_new_privs": libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        }))
        """
    )
    result = await engine.run(make_plan(workspace, code))
    assert result.status == "ok", result.stderr
    seen = json.loads(result.stdout)
    assert seen["sockets"] == []
    assert secret not in result.stdout and SECRET_NAME not in seen["environ"]
    assert "SANDGATE" not in seen["server_environ"]
    assert (seen["uid"], seen["gid"]) == (65534, 65534)
    assert int(seen["cap_eff"], 16) == 0
    assert seen["no_new_privs"] == 1  # prctl answers 1 when set, 0 when not, -1 on an error


async def test_fork_bomb_is_contained(engine: ContainerEngine, workspace: WorkspacePaths) -> None:
    code = "import os\nwhile True:\n    os.fork()\n"
    result = await engine.run(make_plan(workspace, code, processes=32, wall_timeout_s=30))
    assert result.status != "ok"
    assert result.limit is not None and "processes 32" in result.limit, (result, result.stderr)
    assert subprocess.run(["true"], check=False).returncode == 0  # the host can still fork


async def test_memory_bomb_is_stopped_as_memory(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    code = "hog = []\nwhile True:\n    hog.append(b'x' * (16 << 20))\n"
    result = await engine.run(make_plan(workspace, code, memory_bytes=192 << 20))
    assert (result.status, result.limit) == ("memory", f"memory {192 << 20} bytes"), result


async def test_infinite_loop_times_out_and_leaves_no_container(
    engine: ContainerEngine, workspace: WorkspacePaths, tracker: Tracker
) -> None:
    plan = make_plan(
        workspace, "print('spinning', flush=True)\nwhile True:\n    pass\n", wall_timeout_s=2.0
    )
    began = time.monotonic()
    result = await engine.run(plan)
    assert time.monotonic() - began < 10
    assert (result.status, result.limit, result.exit_code) == ("timeout", "wall time 2 s", None)
    assert result.stdout == "spinning\n"
    cid = engine.container_for(plan.decision_id)
    assert cid is not None
    assert cid not in {c.id for c in tracker.docker.labelled()}


async def test_workspace_budget_caps_each_file_and_is_reported(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    (workspace.files / "old.bin").write_bytes(b"o" * 40_000)
    big = "open('big.bin', 'wb').write(b'x' * 100_000)"
    result = await engine.run(make_plan(workspace, big, workspace_bytes=64_000))
    limits = Limits(workspace_bytes=64_000)
    # Killed either way: by the refused write's report (EFBIG) or by the watchdog first.
    assert (result.status, result.limit) == ("killed", workspace_limit(limits)), result
    assert (workspace.files / "big.bin").stat().st_size <= 24_000
    many = "for n in range(3):\n    open(f'part{n}.bin', 'wb').write(b'y' * 20_000)"
    spread = await engine.run(make_plan(workspace, many, workspace_bytes=64_000))
    assert (spread.status, spread.limit) == ("killed", workspace_limit(limits))
