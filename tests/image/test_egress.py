"""Egress from the image: a route's `quotas.network` rule starts the image's own mitmproxy (its
venv in /opt/sandgate/egress-venv, root's and read-only), run as the non-root user with a
read-only root filesystem, its CA and sockets in the state volume. The container is started as
an MCP client config starts it (stdio), but on the host's network so it reaches the loopback
origin server this test starts (`tests/egress/_origin.py`), under a name the proxy maps."""

from __future__ import annotations

import time
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.egress._origin import Origin
from tests.image.conftest import Deployment, docker
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.container, pytest.mark.slow]

ROUTE = "/tools/run_code/quotas/network"
ORIGIN_CA = "/etc/sandgate/origin-ca.pem"
POLICY = "/etc/sandgate/egress-policy.yaml"
EGRESS_POLICY = f"""\
version: '1'
default: deny
quotas: {{timeout_s: 30, memory_mb: 256}}
all_tools: {{engine: wasm, state: fresh}}
tools:
  run_code:
    quotas:
      network:
        allow: ['api.test', '127.0.0.1']
server:
  egress:
    hosts: {{api.test: 127.0.0.1, other.test: 127.0.0.2}}
    upstream_ca: {ORIGIN_CA}
"""

FETCH = """
import urllib.request
with urllib.request.urlopen("https://api.test:{port}/echo?from=image", timeout=20) as answer:
    print("allowed", answer.status)
try:
    urllib.request.urlopen("https://other.test:{port}/echo", timeout=20)
    print("reached other.test")
except PermissionError as refused:
    print("refused", refused)
"""


def _size_mb(image: str) -> float:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image)) / 1e6


async def test_wasm_code_in_the_image_reaches_only_the_allowed_host(
    server_image: str, deployment: Deployment, origin: Origin, tmp_path: Path
) -> None:
    policy = tmp_path / "egress-policy.yaml"
    policy.write_text(EGRESS_POLICY)
    name = deployment.name("egress")
    deployment.containers.append(name)
    volume = deployment.volume()
    params = StdioServerParameters(
        command="docker",
        args=[
            "run", "-i", "--rm", "--name", name,
            "--read-only", "--tmpfs", "/tmp", "--network", "host",
            "-v", f"{volume}:/var/lib/sandgate",
            "-v", f"{origin.ca}:{ORIGIN_CA}:ro",
            "-v", f"{policy}:{POLICY}:ro",
            server_image, "serve", "--policy", POLICY,
        ],
    )  # fmt: skip
    began = time.monotonic()
    async with Client(stdio_client(params)) as client:
        result = await client.call_tool("run_code", {"code": FETCH.format(port=origin.https_port)})
        took = time.monotonic() - began
        assert isinstance(result, types.CallToolResult), result
        payload = dict(result.structured_content or {})
        assert payload.get("status") == "ok", text_of(result)
        allowed, refused = payload["stdout"].splitlines()
        assert allowed == "allowed 200", payload
        assert refused.startswith("refused egress to other.test"), payload
        assert ROUTE in refused, payload
        # mitmproxy ran as the image's user and wrote its CA into the volume.
        owner = docker("exec", name, "stat", "-c", "%u", "/var/lib/sandgate/egress/mitmproxy")
        assert owner.strip() == "10001", owner
    assert [r["path"] for r in origin.received if r["path"] == "/echo?from=image"], origin.received
    venv_mb = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "du", server_image,
        "-sm", "/opt/sandgate/egress-venv",
    ).split()[0]  # fmt: skip
    print(
        f"\nimage {server_image}: {_size_mb(server_image):.0f} MB, of which the egress venv "
        f"{venv_mb} MB; start -> first egress run_code {took:.2f} s"
    )
