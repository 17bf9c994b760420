"""The container engine from inside the server image: through the host's Docker socket when the
operator mounts it, and a clear refusal of that route when it is not mounted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.image.conftest import Deployment
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.container, pytest.mark.slow]

SOCKET = "/var/run/docker.sock"
SERVER_UID = 10001
"""The image's user, `sandgate`."""
IN_SANDBOX_CONTAINER = "print(b'/opt/sandgate/server.py' in open('/proc/1/cmdline', 'rb').read())"
"""True only where PID 1 is the sandbox image's interpreter server (no /proc in wasm)."""
POLICY = """\
version: "1"
default: deny
engines:
  box: {kind: container, runtime: runc}
tools:
  run_python_code: {engine: box}
"""


def _stdio(image: str, name: str, policy: Path, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(
        command="docker",
        args=[
            "run", "-i", "--rm", "--name", name, "--read-only", "--tmpfs", "/tmp",
            "-v", f"{policy}:/etc/sandgate/box.yaml:ro",
            "-e", "SANDGATE_POLICY=/etc/sandgate/box.yaml",
            *extra, image,
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("box") / "box.yaml"
    path.write_text(POLICY)
    path.chmod(0o644)
    return path


async def test_a_run_goes_through_the_mounted_docker_socket(
    server_image: str,
    deployment: Deployment,
    policy: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    name = deployment.name("socket")
    deployment.containers.append(name)
    group = str(os.stat(SOCKET).st_gid)  # the server's user joins the socket's group, no more
    # The engine bind-mounts each sandbox's folders from the state folder, and the daemon reads
    # those paths on the host: the state folder is a host folder at the same path inside.
    state = tmp_path_factory.mktemp("host-state")
    os.chown(state, SERVER_UID, SERVER_UID)
    params = _stdio(
        server_image, name, policy,
        "-v", f"{SOCKET}:{SOCKET}", "--group-add", group,
        "-v", f"{state}:{state}", "-e", f"SANDGATE_HOME={state}",
    )  # fmt: skip
    began = time.monotonic()
    async with Client(stdio_client(params)) as client:
        result = await client.call_tool("run_python_code", {"code": IN_SANDBOX_CONTAINER})
    assert isinstance(result, types.CallToolResult) and not result.is_error, text_of(result)
    assert text_of(result).strip() == "True"
    print(f"\ncontainer engine through the socket: first run in {time.monotonic() - began:.2f} s")


async def test_without_the_socket_the_route_says_to_mount_it(
    server_image: str, deployment: Deployment, policy: Path
) -> None:
    name = deployment.name("nosocket")
    deployment.containers.append(name)
    async with Client(stdio_client(_stdio(server_image, name, policy))) as client:
        result = await client.call_tool("run_python_code", {"code": "print(1)"})
    assert isinstance(result, types.CallToolResult) and result.is_error
    said = text_of(result)
    assert "the container:runc engine could not start" in said and SOCKET in said, said
    # Inside the image the fix is the host's socket, not the host's setup script.
    assert f"-v {SOCKET}:{SOCKET}" in said and "root on the host" in said, said
    assert "docker-setup.sh" not in said, said
