"""Egress on the container engine, under runc and gVisor: an egress run's container is lent the
proxy's Unix socket and nothing else, code's plain `urllib` (and `pip`) reaches allowed hosts
through it, HTTPS through the proxy's CA, a refusal is `PermissionError` with the policy's
words, a `none` run has no path to the proxy, and a persistent session carries each run's
lease, never the previous one's.

Real dockerd, the real egress proxy (`sandboxes.egress`, mitmdump) and the loopback origin
servers of `tests/egress` (names the proxy maps to 127.0.0.1); one proxy, origin and engine
per runtime for the module."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from sandboxes import (
    Egress,
    EngineUnavailable,
    ExecutionPlan,
    Limits,
    Program,
    RunResult,
    WorkspacePaths,
)
from sandboxes._types import StateMode
from sandboxes.container import ContainerEngine, Runtime
from sandboxes.container._fleet import egress_refusal
from sandboxes.container._spec import DEFAULT_IMAGE, EGRESS_PORT, EGRESS_SOCKET_GUEST
from sandboxes.egress import BrokeredSecret, EgressProxy, EgressVerdict
from tests.conftest import IN_CI
from tests.egress._origin import Origin

pytestmark = [pytest.mark.anyio, pytest.mark.container]

ALLOWED = "api.test"
REFUSED = "other.test"
RULE = "/tools/run_code/quotas/network"
IMAGE = DEFAULT_IMAGE


def decide(host: str, port: int, address: str | None) -> EgressVerdict:
    """The test's policy: `ALLOWED` only."""
    if host == ALLOWED:
        return EgressVerdict(True, f"{RULE}/allow/0", f"{host} is allowed")
    return EgressVerdict(False, RULE, f"no allow rule names {host}")


def refusal(host: str, port: int) -> str:
    return f"PermissionError: egress to {host}:{port} refused by policy rule {RULE}"


@pytest.fixture(scope="module", params=["runc", "runsc"])
async def engine(
    request: pytest.FixtureRequest, anyio_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ContainerEngine]:
    runtime: Runtime = request.param
    pool = tmp_path_factory.mktemp(f"pool-{runtime}")
    async with ContainerEngine(runtime=runtime, image=IMAGE, pool_size=1, pool_dir=pool) as made:
        try:
            await made.start()
        except EngineUnavailable as exc:
            if IN_CI:
                pytest.fail(f"the {runtime} engine is required in CI: {exc}")
            pytest.skip(f"the {runtime} engine cannot start: {exc}")
        yield made


@dataclass
class Runner:
    engine: ContainerEngine
    proxy: EgressProxy
    origin: Origin
    workspace: WorkspacePaths
    session: str

    async def lease(self, *secrets_: BrokeredSecret) -> Egress:
        return await self.proxy.lease(decide=decide, quota_rule=RULE, secrets=secrets_)

    async def __call__(
        self, source: str, lease: Egress | None, *, state: StateMode = "fresh"
    ) -> RunResult:
        plan = ExecutionPlan(
            decision_id=f"egress-{secrets.token_hex(4)}",
            engine="container",
            program=Program("code", source),
            limits=Limits(wall_timeout_s=60.0, network="egress" if lease else "none"),
            workspace=self.workspace,
            session_id=self.session,
            runtime=self.engine.runtime,
            state=state,
            egress=lease,
        )
        return await self.engine.run(plan)


@pytest.fixture
def run(
    engine: ContainerEngine, proxy: EgressProxy, origin: Origin, workspace: WorkspacePaths
) -> Runner:
    return Runner(engine, proxy, origin, workspace, f"egress-{secrets.token_hex(4)}")


def outcome(result: RunResult) -> str:
    return f"{result.status}: {result.error}\n{result.stdout}\n{result.stderr}"


async def test_urllib_reaches_an_allowed_host_over_http_and_https(run: Runner) -> None:
    lease = await run.lease()
    source = (
        "import json, urllib.request\n"
        f"for url in ('http://{ALLOWED}:{run.origin.http_port}/plain',\n"
        f"            'https://{ALLOWED}:{run.origin.https_port}/secure'):\n"
        "    print(json.load(urllib.request.urlopen(url, timeout=20))['path'])\n"
    )
    result = await run(source, lease)
    usage = await run.proxy.release(lease)
    assert result.status == "ok", outcome(result)
    assert result.stdout.split() == ["/plain", "/secure"]
    reached = {(c.host, c.port, c.allowed) for c in usage.connections}
    assert reached == {
        (ALLOWED, run.origin.http_port, True),
        (ALLOWED, run.origin.https_port, True),
    }


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_refused_host_raises_permission_error_with_the_policy_words(
    run: Runner, scheme: str
) -> None:
    lease = await run.lease()
    port = run.origin.http_port if scheme == "http" else run.origin.https_port
    source = (
        "import urllib.request\n"
        f"urllib.request.urlopen('{scheme}://{REFUSED}:{port}/', timeout=20)\n"
    )
    result = await run(source, lease)
    await run.proxy.release(lease)
    assert result.status == "error", outcome(result)
    assert result.error == refusal(REFUSED, port)
    # The user's frame and the one line: no urllib or http.client frames to dig through.
    assert result.stderr.count('File "') == 1 and 'File "<code>"' in result.stderr
    assert "During handling" not in result.stderr


REQUESTS_PACKAGES = ("requests", "urllib3", "idna", "certifi", "charset_normalizer")
"""`requests` and what it imports, copied from the test's own environment into the session's
packages (the compiled speed-ups left out: their `.py` twins serve)."""


async def test_a_refusal_met_in_an_installed_package_shows_only_the_users_frame(
    run: Runner,
) -> None:
    packages = Path(requests.__file__).parents[1]
    for name in REQUESTS_PACKAGES:
        ignore = shutil.ignore_patterns("*.so", "__pycache__")
        shutil.copytree(packages / name, run.workspace.site / name, ignore=ignore)
    lease = await run.lease()
    port = run.origin.https_port
    result = await run(f"import requests\nrequests.get('https://{REFUSED}:{port}/')\n", lease)
    await run.proxy.release(lease)
    assert result.status == "error", outcome(result)
    assert result.error == refusal(REFUSED, port)
    assert result.stderr.count('File "') == 1 and 'File "<code>"' in result.stderr


async def test_a_none_run_has_no_path_to_the_proxy(run: Runner) -> None:
    source = (
        "import os, socket\n"
        f"print(os.path.exists({EGRESS_SOCKET_GUEST!r}), os.listdir('/run/sandgate'))\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {EGRESS_PORT}), 5)\n"
        "except ConnectionRefusedError:\n"
        "    print('refused')\n"
        "print(sorted(k for k in os.environ if 'proxy' in k.lower()))\n"
    )
    result = await run(source, None)
    assert result.status == "ok", outcome(result)
    assert result.stdout.splitlines() == ["False []", "refused", "[]"]


async def test_a_persistent_session_carries_each_runs_lease_and_only_its_own(
    run: Runner,
) -> None:
    first = await run.lease(
        BrokeredSecret(name="gh", value="s3cret", may_send=lambda h, p: h == ALLOWED, variable="GH")
    )
    url = f"https://{ALLOWED}:{run.origin.https_port}/whoami"
    show = (
        "import json, os, urllib.request\n"
        "print(json.dumps([os.environ.get('HTTPS_PROXY'), os.environ.get('GH')]))\n"
        f"print(json.load(urllib.request.urlopen({url!r}, timeout=20))['path'])\n"
    )
    keep = (
        "import urllib.request\n"
        "old = urllib.request.ProxyHandler()  # the first run's proxy, kept by the code\n"
    )
    result = await run(keep + show, first, state="persistent")
    await run.proxy.release(first)
    assert result.status == "ok", outcome(result)
    seen = json.loads(result.stdout.splitlines()[0])
    assert seen[0] == first.proxy_url("127.0.0.1", EGRESS_PORT)
    assert seen[1] == dict(first.environment)["GH"]

    second = await run.lease()
    stale = (
        "opener = urllib.request.build_opener(old)\n"
        "try:\n"
        f"    opener.open({url!r}, timeout=20)\n"
        "except OSError as exc:\n"
        "    print(f'stale: {type(exc).__name__}: {exc}')\n"
    )
    result = await run(show + stale, second, state="persistent")
    await run.proxy.release(second)
    assert result.status == "ok", outcome(result)
    assert result.state == "kept"
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == [second.proxy_url("127.0.0.1", EGRESS_PORT), None]
    assert lines[1] == "/whoami"
    # The first run's credentials were released with its run: the proxy refuses them.
    assert lines[2].startswith(f"stale: PermissionError: egress to {ALLOWED}:")


async def test_pip_goes_through_the_proxy_and_is_refused_unless_allowed(run: Runner) -> None:
    lease = await run.lease()
    source = (
        "import subprocess, sys\n"
        "for host in ('" + REFUSED + "', '" + ALLOWED + "'):\n"
        "    done = subprocess.run(\n"
        "        [sys.executable, '-m', 'pip', 'download', '--no-deps', '--retries', '0',\n"
        "         '--disable-pip-version-check', '-d', '/tmp/pip',\n"
        f"         '--index-url', f'https://{{host}}:{run.origin.https_port}/simple/',\n"
        "         'sandgate-probe'], capture_output=True, text=True)\n"
        "    print(host, done.returncode, (done.stdout + done.stderr).splitlines()[-1])\n"
    )
    result = await run(source, lease)
    usage = await run.proxy.release(lease)
    assert result.status == "ok", outcome(result)
    refused, allowed = result.stdout.splitlines()
    assert refused == f"{REFUSED} 2 {refusal(REFUSED, run.origin.https_port)}"
    # Through the proxy, trusting its CA, pip reached the index: it has no such package.
    assert allowed == f"{ALLOWED} 1 ERROR: No matching distribution found for sandgate-probe"
    assert {(c.host, c.allowed) for c in usage.connections} == {
        (REFUSED, False),
        (ALLOWED, True),
    }


@dataclass
class Daemon:
    """What `egress_refusal` asks a daemon: an image's labels and the registered runtimes."""

    labels: dict[str, str]
    runsc_args: list[str]
    where: str = "unix:///var/run/docker.sock"

    def image_labels(self, tag: str) -> dict[str, str]:
        return self.labels

    def info(self) -> dict[str, object]:
        return {"Runtimes": {"runc": {"path": "runc"}, "runsc": {"runtimeArgs": self.runsc_args}}}


@pytest.mark.parametrize(
    ("runtime", "labels", "runsc_args", "refused_for"),
    [
        ("runc", {"sandgate.egress": "1"}, [], None),
        ("runsc", {"sandgate.egress": "1"}, ["--network=none", "--host-uds=open"], None),
        ("runsc", {"sandgate.egress": "1"}, ["--network=none"], "--host-uds=open"),
        ("runc", {}, [], "build-image"),
    ],
)
def test_egress_is_refused_where_the_image_or_runsc_cannot_lend_the_socket(
    runtime: Runtime, labels: dict[str, str], runsc_args: list[str], refused_for: str | None
) -> None:
    why = egress_refusal(Daemon(labels, runsc_args), runtime, "img")  # type: ignore[arg-type]
    assert (why is None) == (refused_for is None)
    assert refused_for is None or refused_for in str(why)
