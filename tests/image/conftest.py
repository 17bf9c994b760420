"""Fixtures of the server image suite: the image built once per session (`scripts/server-image.sh`,
seconds when its inputs are unchanged) and every container, volume and network a test makes,
removed at the end whatever happened."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 900.0
DOCKER_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 120.0
REDIS_IMAGE = "sandgate-redis:bookworm"
SERVER_PORT = 8765
"""The port `sandgate serve` listens on inside the container."""


def docker(*args: str, timeout_s: float = DOCKER_TIMEOUT_S, check: bool = True) -> str:
    """Run the docker CLI (as an operator would) and return its stdout."""
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def _docker_available() -> None:
    problem = None
    if shutil.which("docker") is None:
        problem = "the docker CLI is not installed"
    elif subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        problem = "dockerd does not answer"
    if problem is not None:
        if IN_CI:
            pytest.fail(f"the image suite needs dockerd in CI (scripts/docker-setup.sh): {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="session")
def server_image() -> str:
    """The server image (and the Redis image beside it), built from this checkout."""
    _docker_available()
    began = time.monotonic()
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "server-image.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"scripts/server-image.sh failed:\n{done.stderr[-4000:]}"
    tag = done.stdout.strip().splitlines()[-1]
    print(f"\nserver image {tag}: built or found current in {time.monotonic() - began:.1f} s")
    return tag


@dataclass
class Deployment:
    """What a test starts with docker: each container, volume and network it made is named
    with this session's prefix and removed by `clean`."""

    prefix: str = field(default_factory=lambda: f"sgimg-{secrets.token_hex(3)}")
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}-{secrets.token_hex(2)}"

    def run(self, *args: str, name: str) -> str:
        """`docker run -d --name NAME ARGS...`, tracked; returns the container's name."""
        self.containers.append(name)
        docker("run", "-d", "--name", name, *args)
        return name

    def network(self) -> str:
        name = self.name("net")
        self.networks.append(name)
        docker("network", "create", name)
        return name

    def volume(self) -> str:
        name = self.name("state")
        self.volumes.append(name)
        docker("volume", "create", name)
        return name

    def host_port(self, container: str, port: int = SERVER_PORT) -> int:
        """The loopback port docker published `port` of `container` on."""
        ports = json.loads(
            docker("inspect", "--format", "{{json .NetworkSettings.Ports}}", container)
        )
        return int(ports[f"{port}/tcp"][0]["HostPort"])

    def logs(self, container: str) -> str:
        return docker("logs", container, check=False, timeout_s=30)

    def clean(self) -> None:
        for name in self.containers:
            docker("rm", "-f", "-v", name, check=False)
        for name in self.volumes:
            docker("volume", "rm", "-f", name, check=False)
        for name in self.networks:
            docker("network", "rm", name, check=False)
        left = docker("ps", "-aq", "--filter", f"name={self.prefix}", check=False).split()
        assert not left, f"containers left behind: {left}"


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    made = Deployment()
    try:
        yield made
    finally:
        made.clean()
