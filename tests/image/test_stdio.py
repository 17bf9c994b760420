"""The image as an MCP client config runs it: `docker run -i --rm IMAGE` over stdio, non-root,
read-only root filesystem, no network, the real MCP client."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.image.conftest import REPO, Deployment, docker
from tests.processes import sandgate_command
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.container, pytest.mark.slow]

IMAGE_POLICY = REPO / "policies" / "default.yaml"
"""The host baseline's policy: the image's own differs only in the Pyodide layers it requires."""


def client_config(image: str, name: str, volume: str) -> StdioServerParameters:
    """What the README gives an MCP client (`docker run -i --rm ...`), with a name to track."""
    return StdioServerParameters(
        command="docker",
        args=[
            "run", "-i", "--rm", "--name", name,
            "--read-only", "--tmpfs", "/tmp", "--network", "none",
            "-v", f"{volume}:/var/lib/sandgate",
            image,
        ],
    )  # fmt: skip


def test_the_image_is_labelled_non_root_and_checks_its_health(server_image: str) -> None:
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", server_image))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert config["Labels"]["org.opencontainers.image.version"] == version
    assert config["Labels"]["org.opencontainers.image.revision"] not in ("", "unknown")
    assert config["User"] == "sandgate"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Entrypoint"] == ["sandgate"] and config["Cmd"] == ["serve"]
    uid = docker("run", "--rm", "--entrypoint", "id", server_image, "-u").strip()
    assert uid == "10001"


async def _first_calls(params: StdioServerParameters, container: str | None = None) -> str:
    """Start the server, make the first calls of each engine, say how long each took."""
    began = time.monotonic()
    async with Client(stdio_client(params)) as client:
        initialized = time.monotonic()
        result = await client.call_tool("run_python_code", {"code": "print(6 * 7)"})
        first_run = time.monotonic()
        assert isinstance(result, types.CallToolResult) and not result.is_error, text_of(result)
        assert text_of(result).strip() == "42"
        pyodide = await client.call_tool("pyodide_execute", {"code": "import sys; sys.platform"})
        first_pyodide = time.monotonic()
        assert isinstance(pyodide, types.CallToolResult) and not pyodide.is_error, text_of(pyodide)
        assert "emscripten" in text_of(pyodide)
        if container is not None:
            health = docker("exec", container, "python", "-I", "/opt/sandgate/healthcheck.py")
            assert health.startswith("serving over stdio"), health
    return (
        f"start -> initialize {initialized - began:.2f} s; first run_python_code "
        f"{first_run - initialized:.2f} s; first pyodide_execute {first_pyodide - first_run:.2f} s"
    )


async def test_stdio_serves_both_engines_from_a_read_only_container(
    server_image: str, deployment: Deployment, tmp_path: Path
) -> None:
    name = deployment.name("stdio")
    deployment.containers.append(name)
    volume = deployment.volume()
    in_image = await _first_calls(client_config(server_image, name, volume), container=name)
    # The baseline in the same run: the same calls to `sandgate serve` on this host.
    on_host = await _first_calls(
        StdioServerParameters(
            command=sandgate_command(),
            args=["serve", "--policy", str(IMAGE_POLICY), "--state-dir", str(tmp_path)],
        )
    )
    print(f"\nstdio, fresh container: {in_image}\nstdio, host process (baseline): {on_host}")
    # The state went to the volume (counters, audit), nothing else was writable.
    listing = docker(
        "run", "--rm", "--entrypoint", "ls", "-v", f"{volume}:/var/lib/sandgate",
        server_image, "/var/lib/sandgate",
    ).split()  # fmt: skip
    assert {"audit.jsonl", "state.sqlite3"} <= set(listing), listing
