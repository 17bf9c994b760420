"""compose.yaml's deployment, started with docker-compose as an operator starts it (`up -d`, then
`down -v`): Redis beside two server replicas over streamable HTTP with bearer tokens, on host
ports and with a grants file this test chooses. The MCP calls over HTTP, 401 without a token,
and the shipped per-minute limit counted across both replicas."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import mcp_types as types
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import IN_CI
from tests.image.conftest import READY_TIMEOUT_S, REDIS_IMAGE, REPO, SERVER_PORT, docker
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.container, pytest.mark.slow]

COMPOSE = REPO / "compose.yaml"
COMPOSE_POLICY = REPO / "scripts/server-image/compose-policy.yaml"
UP_TIMEOUT_S = 120.0
DOWN_TIMEOUT_S = 60.0
REPLICAS = ("sandgate-1", "sandgate-2")
"""compose.yaml's server services; SANDGATE_PORT_1 and _2 publish them on the host."""
TOKENS = {"alice": "image-test-token-alice", "bob": "image-test-token-bob"}


@dataclass(frozen=True, slots=True)
class Project:
    """One `docker-compose -p NAME -f compose.yaml` project and the variables it runs with."""

    name: str
    env: dict[str, str]

    def compose(self, *args: str, timeout_s: float, check: bool = True) -> str:
        done = subprocess.run(
            ["docker-compose", "-p", self.name, "-f", str(COMPOSE), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)} failed ({done.returncode}):\n{done.stderr}"
            )
        return done.stdout

    def container(self, service: str) -> str:
        """The id of `service`'s container (from the labels Compose puts on it)."""
        labels = [
            f"label=com.docker.compose.{k}" for k in (f"project={self.name}", f"service={service}")
        ]
        found = docker(
            "ps", "-aq", "--no-trunc", "--filter", labels[0], "--filter", labels[1]
        ).split()
        assert len(found) == 1, f"service {service} has containers {found}"
        return found[0]

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", timeout_s=30, check=False)

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of this project that still exist."""
        label = f"label=com.docker.compose.project={self.name}"
        return [
            *docker("ps", "-aq", "--filter", label, check=False).split(),
            *docker("volume", "ls", "-q", "--filter", label, check=False).split(),
            *docker("network", "ls", "-q", "--filter", label, check=False).split(),
        ]


@dataclass(frozen=True, slots=True)
class Replica:
    service: str
    container: str
    url: str
    """The MCP endpoint on the host's loopback."""


def _compose_available() -> None:
    if shutil.which("docker-compose") is None:
        problem = "docker-compose is not installed (Debian's package: scripts/test.sh installs it)"
        if IN_CI:
            pytest.fail(f"the image suite needs it in CI: {problem}")
        pytest.skip(problem)


def _free_loopback_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now, all different (held open together while picked)."""
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _grants_file(folder: Path) -> Path:
    """The grants.yaml compose.yaml mounts: one line per client, the sha256 of its token."""
    path = folder / "grants.yaml"
    path.write_text(
        "".join(
            f"{name}: {{token_sha256: {hashlib.sha256(token.encode()).hexdigest()}}}\n"
            for name, token in TOKENS.items()
        )
    )
    path.chmod(0o644)  # read by the image's user, uid 10001
    return path


@pytest.fixture(scope="module")
def project(server_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """compose.yaml, up (`docker-compose up -d`) for this module and `down -v` after it."""
    _compose_available()
    grants = _grants_file(tmp_path_factory.mktemp("compose"))
    ports = _free_loopback_ports(len(REPLICAS))
    made = Project(
        name=f"sgimg-{secrets.token_hex(4)}",
        env={
            **os.environ,
            "SANDGATE_GRANTS": str(grants),
            **{f"SANDGATE_PORT_{n}": str(port) for n, port in enumerate(ports, start=1)},
        },
    )
    try:
        began = time.monotonic()
        made.compose("up", "-d", timeout_s=UP_TIMEOUT_S)
        print(f"\ndocker-compose up -d (redis + 2 replicas): {time.monotonic() - began:.1f} s")
        yield made
    finally:
        made.compose("down", "-v", "--timeout", "10", timeout_s=DOWN_TIMEOUT_S, check=False)
        left = made.leftovers()
        assert not left, f"docker-compose down -v left {left} of project {made.name}"


@pytest.fixture(scope="module")
def replicas(project: Project) -> list[Replica]:
    """compose.yaml's two replicas, answering on the ports the test chose."""
    began = time.monotonic()
    started = [
        Replica(
            service,
            project.container(service),
            f"http://127.0.0.1:{project.env[f'SANDGATE_PORT_{n}']}/mcp",
        )
        for n, service in enumerate(REPLICAS, start=1)
    ]
    for replica in started:
        _wait_until_answering(replica, project)
    print(f"both replicas answering {time.monotonic() - began:.1f} s after `up -d` returned")
    return started


def _wait_until_answering(replica: Replica, project: Project) -> None:
    """Bounded: the replica answers HTTP (401 without a token) or the logs are the failure."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            state = docker("inspect", "--format", "{{.State.Status}}", replica.container).strip()
            assert state == "running", f"{replica.service} is {state}:\n{project.logs()}"
            try:
                if http.get(replica.url).status_code == 401:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # polling a port docker-proxy already accepts on; bounded above
    raise AssertionError(f"{replica.url} did not answer in {READY_TIMEOUT_S} s:\n{project.logs()}")


def test_compose_runs_the_built_images_read_only_with_state_in_volumes(
    server_image: str, project: Project, replicas: list[Replica]
) -> None:
    made = {
        service: json.loads(docker("inspect", project.container(service)))[0]
        for service in ("redis", *REPLICAS)
    }
    assert made["redis"]["Config"]["Image"] == REDIS_IMAGE
    for service in REPLICAS:
        container = made[service]
        assert container["Config"]["Image"] == server_image
        assert container["HostConfig"]["ReadonlyRootfs"] is True
        assert "/tmp" in container["HostConfig"]["Tmpfs"]
        state = [m for m in container["Mounts"] if m["Destination"] == "/var/lib/sandgate"]
        assert [m["Type"] for m in state] == ["volume"], container["Mounts"]
        assert container["HostConfig"]["PortBindings"][f"{SERVER_PORT}/tcp"] == [
            {"HostIp": "127.0.0.1", "HostPort": project.env[f"SANDGATE_PORT_{service[-1]}"]}
        ]
    volumes = {m["Name"] for s in REPLICAS for m in made[s]["Mounts"] if m["Type"] == "volume"}
    assert len(volumes) == len(REPLICAS), f"each replica has a state volume of its own: {volumes}"


@pytest.fixture
async def alice(replicas: list[Replica]) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
    async with (
        httpx.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(replicas[0].url, http_client=http)) as client,
    ):
        yield client


async def test_a_call_without_a_token_gets_401(replicas: list[Replica]) -> None:
    async with httpx.AsyncClient() as http:
        for replica in replicas:
            response = await http.post(
                replica.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
            )
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith('Bearer realm="sandgate"')


def test_the_healthcheck_asks_the_replicas_own_port(replicas: list[Replica]) -> None:
    for replica in replicas:
        said = docker("exec", replica.container, "python", "-I", "/opt/sandgate/healthcheck.py")
        assert said.strip() == f"HTTP on 127.0.0.1:{SERVER_PORT} answers (401)", said


async def test_both_engines_answer_over_http(alice: Client) -> None:
    began = time.monotonic()
    result = await alice.call_tool("run_python_code", {"code": "print(2 ** 10)"})
    ran = time.monotonic()
    assert isinstance(result, types.CallToolResult) and not result.is_error, result
    assert text_of(result).strip() == "1024"
    pyodide = await alice.call_tool("pyodide_execute", {"code": "1 + 2"})
    assert isinstance(pyodide, types.CallToolResult) and not pyodide.is_error, pyodide
    assert "3" in text_of(pyodide)
    print(f"\nHTTP replica: first run_python_code {ran - began:.2f} s")


async def test_the_shipped_limit_is_counted_across_both_replicas(replicas: list[Replica]) -> None:
    policy = yaml.safe_load(COMPOSE_POLICY.read_text())
    (limit,) = policy["tools"]["run_python_code"]["limits"]
    assert (limit["window"], limit["scope"]) == ("minute", "grant"), limit
    headers = {"Authorization": f"Bearer {TOKENS['bob']}"}
    outcomes: list[bool] = []
    began = time.monotonic()
    async with (
        httpx.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(replicas[0].url, http_client=http)) as first,
        Client(streamable_http_client(replicas[1].url, http_client=http)) as second,
    ):
        for call in range(limit["max"] + 1):
            client = (first, second)[call % 2]  # alternate: 1, 2, 1, 2, ...
            result = await client.call_tool("run_python_code", {"code": f"print({call})"})
            assert isinstance(result, types.CallToolResult)
            outcomes.append(bool(result.is_error))
    assert outcomes == [False] * limit["max"] + [True], outcomes
    assert "executions" in text_of(result), text_of(result)
    print(f"\n{limit['max'] + 1} calls over both replicas in {time.monotonic() - began:.1f} s")
