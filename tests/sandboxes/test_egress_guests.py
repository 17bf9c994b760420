"""Egress on the engines whose guests have no sockets (wasm prepared and started per call,
Pyodide): code's plain `urllib.request.urlopen` (and `pyodide.http.pyfetch`) reaches an allowed
host through the host's relay and the real egress proxy (mitmdump), HTTP and HTTPS; a host
the lease refuses raises `PermissionError` with the proxy's text; a run without egress still
meets the one-line no-network refusal; and a persistent session's every run goes out on its
own lease.

The egress suite's loopback echo servers (HTTP, and HTTPS with its test CA:
`tests/egress/_origin.py`), one plain server of this module's own (a 404, a request left
unanswered) and one proxy serve the whole module; the proxy maps the test names `api.test` and
`other.test` to 127.0.0.1, and the lease allows only `api.test`.

Also: `requests` works in both guests (copied into the session's packages); a request waits at
most its own `timeout=` and never past the run's time limit."""

from __future__ import annotations

import json
import secrets
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from sandboxes import (
    Egress,
    ExecutionPlan,
    Limits,
    Program,
    RunResult,
    WasmEngine,
    WorkspacePaths,
    session_key,
)
from sandboxes._types import StateMode
from sandboxes.egress import EgressProxy, EgressVerdict
from tests.egress._origin import Origin, start_origin
from tests.egress.fixtures import require_mitmproxy
from tests.sandboxes.conftest import Target, _pyodide

pytestmark = pytest.mark.anyio

ALLOWED, REFUSED = "api.test", "other.test"
RULE = "/tools/run_code/quotas/network"
NO_NETWORK = "sandgate: this sandbox has no network (policy network: none)"


# The loopback servers ----------------------------------------------------------------------

HANG = threading.Event()
"""Set when the module ends: until then `/hang` answers nothing."""


class _Odd(BaseHTTPRequestHandler):
    """What the echo servers (`tests/egress/_origin.py`) do not do: `/missing` answers 404,
    `/hang` nothing until the module ends."""

    def do_GET(self) -> None:
        if self.path.startswith("/hang"):
            HANG.wait(timeout=120)
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class Upstream:
    """The loopback servers: the echo servers (`origin`) and `odd_port` (plain HTTP, `_Odd`)."""

    origin: Origin
    odd_port: int

    @property
    def http_port(self) -> int:
        return self.origin.http_port

    @property
    def https_port(self) -> int:
        return self.origin.https_port


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    odd = ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    thread = threading.Thread(target=odd.serve_forever, daemon=True)
    thread.start()
    try:
        with start_origin(tmp_path_factory.mktemp("origin")) as origin:
            yield Upstream(origin, odd.server_address[1])
    finally:
        HANG.set()
        odd.shutdown()
        odd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
async def proxy(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory, anyio_backend: str
) -> AsyncIterator[EgressProxy]:
    require_mitmproxy()
    hosts = {ALLOWED: "127.0.0.1", REFUSED: "127.0.0.1"}
    state = tmp_path_factory.mktemp("egress")
    async with EgressProxy(state, hosts=hosts, upstream_ca=upstream.origin.ca) as running:
        yield running


def _decide(host: str, port: int, address: str | None) -> EgressVerdict:
    """The test lease's policy: `api.test` only."""
    if host == ALLOWED:
        return EgressVerdict(True, f"{RULE}/allow/0", "api.test is allowed")
    return EgressVerdict(False, RULE, f"no allow rule names {host}")


# The engines -------------------------------------------------------------------------------

GUESTS = [
    pytest.param("wasm", marks=pytest.mark.wasm, id="wasm"),
    pytest.param("wasm-started", marks=pytest.mark.wasm, id="wasm-started"),
    pytest.param("pyodide", marks=pytest.mark.pyodide, id="pyodide"),
]


@pytest.fixture(scope="module", params=GUESTS)
async def target(
    request: pytest.FixtureRequest, wasm_engine: WasmEngine, anyio_backend: str
) -> AsyncIterator[Target]:
    name: str = request.param
    if name == "wasm":
        yield Target(name, wasm_engine, "wasm")
    elif name == "wasm-started":
        async with WasmEngine(workers=1, prepare_guests=False, embedded_guests=False) as started:
            await started.wait_ready()
            yield Target(name, started, "wasm")
    else:
        async for made in _pyodide():
            yield made


@dataclass
class Guest:
    """Runs code on the engine under test, in one session of this test's own."""

    target: Target
    proxy: EgressProxy
    workspace: WorkspacePaths
    session: str

    async def run(
        self,
        source: str,
        *,
        egress: Egress | None = None,
        state: StateMode = "fresh",
        wall_timeout_s: float = 30.0,
    ) -> RunResult:
        plan = ExecutionPlan(
            decision_id=f"egress-{secrets.token_hex(4)}",
            engine=self.target.kind,
            program=Program("code", source),
            limits=Limits(wall_timeout_s=wall_timeout_s, network="egress" if egress else "none"),
            workspace=self.workspace,
            session_id=self.session,
            runtime=self.target.runtime,
            state=state,
            egress=egress,
        )
        return await self.target.engine.run(plan)

    async def lease(self) -> Egress:
        return await self.proxy.lease(decide=_decide, quota_rule=RULE)


@pytest.fixture
async def guest(
    target: Target, proxy: EgressProxy, workspace: WorkspacePaths
) -> AsyncIterator[Guest]:
    made = Guest(target, proxy, workspace, f"egress-{secrets.token_hex(4)}")
    yield made
    await target.engine.end_session(session_key("local", made.session))


def _seen(result: RunResult) -> dict[str, Any]:
    """What the echo server received, as the code printed it (its last line); header names
    in lower case."""
    assert result.status == "ok", result.stderr
    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    seen["headers"] = {k.lower(): v for k, v in seen["headers"].items()}
    return seen


# The behaviour -----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_urlopen_gets_from_an_allowed_host(
    guest: Guest, upstream: Upstream, scheme: str
) -> None:
    port = upstream.http_port if scheme == "http" else upstream.https_port
    lease = await guest.lease()
    result = await guest.run(
        "import urllib.request\n"
        f"req = urllib.request.Request('{scheme}://{ALLOWED}:{port}/echo?x=1',\n"
        "                              headers={'X-Test': 'yes'})\n"
        "with urllib.request.urlopen(req, timeout=10) as r:\n"
        "    print(r.status, r.headers['Content-Type'])\n"
        "    print(r.read().decode())\n",
        egress=lease,
    )
    usage = await guest.proxy.release(lease)
    seen = _seen(result)
    assert result.stdout.splitlines()[0] == "200 application/json"
    assert seen["method"] == "GET" and seen["path"] == "/echo?x=1"
    assert seen["headers"]["x-test"] == "yes"
    assert "proxy-authorization" not in seen["headers"]  # the lease stays with the proxy
    assert [(c.host, c.port, c.allowed) for c in usage.connections] == [(ALLOWED, port, True)]


async def test_urlopen_posts_a_body_and_raises_http_error_for_a_404(
    guest: Guest, upstream: Upstream
) -> None:
    lease = await guest.lease()
    result = await guest.run(
        "import urllib.error, urllib.request\n"
        "try:\n"
        f"    urllib.request.urlopen('http://{ALLOWED}:{upstream.odd_port}/missing')\n"
        "except urllib.error.HTTPError as e:\n"
        "    print('HTTPError', e.code)\n"
        f"r = urllib.request.urlopen('https://{ALLOWED}:{upstream.https_port}/echo',\n"
        "                           data=b'a=1&b=2')\n"
        "print(r.read().decode())\n",
        egress=lease,
    )
    await guest.proxy.release(lease)
    seen = _seen(result)
    assert result.stdout.splitlines()[0] == "HTTPError 404"
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/echo", "a=1&b=2")


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_refused_host_raises_permission_error_with_the_proxy_text(
    guest: Guest, upstream: Upstream, scheme: str
) -> None:
    port = upstream.http_port if scheme == "http" else upstream.https_port
    lease = await guest.lease()
    result = await guest.run(
        f"import urllib.request\nurllib.request.urlopen('{scheme}://{REFUSED}:{port}/')\n",
        egress=lease,
    )
    usage = await guest.proxy.release(lease)
    assert result.status == "error", result.stderr
    text = f"egress to {REFUSED}:{port} refused by policy rule {RULE}"
    assert result.error == f"PermissionError: {text}", result.stderr
    assert [(c.host, c.allowed) for c in usage.connections] == [(REFUSED, False)]


async def test_a_request_waits_at_most_its_timeout_and_the_run_its_time_limit(
    guest: Guest, upstream: Upstream
) -> None:
    url = f"http://{ALLOWED}:{upstream.odd_port}/hang"
    lease = await guest.lease()
    timed_out = await guest.run(
        "import urllib.request\n"
        "try:\n"
        f"    urllib.request.urlopen('{url}', timeout=0.5)\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, 'timed out' in str(e))\n",
        egress=lease,
    )
    stopped = await guest.run(
        f"import urllib.request\nurllib.request.urlopen('{url}')\n",
        egress=lease,
        wall_timeout_s=2.0,
    )
    await guest.proxy.release(lease)
    assert timed_out.stdout == "URLError True\n", timed_out.stderr
    assert stopped.status == "timeout", stopped.stderr
    assert stopped.usage.wall_ms < 10_000


async def test_a_run_without_egress_still_has_no_network(guest: Guest, upstream: Upstream) -> None:
    result = await guest.run(
        f"import urllib.request\nurllib.request.urlopen('http://{ALLOWED}:{upstream.http_port}/')\n"
    )
    assert result.status == "error", result.stderr
    assert result.error is not None and NO_NETWORK in result.error, result.stderr
    assert sum(NO_NETWORK in line for line in result.stderr.splitlines()) == 1, result.stderr


async def test_each_run_of_a_persistent_session_goes_out_on_its_own_lease(
    guest: Guest, upstream: Upstream
) -> None:
    url = f"https://{ALLOWED}:{upstream.https_port}/echo"
    fetch = f"import urllib.request\nprint(urllib.request.urlopen('{url}').read().decode())\n"
    first, second = await guest.lease(), await guest.lease()
    ran_first = await guest.run(fetch, egress=first, state="persistent")
    ran_second = await guest.run(fetch, egress=second, state="persistent")
    used_first = await guest.proxy.release(first)
    used_second = await guest.proxy.release(second)
    ran_none = await guest.run(fetch, state="persistent")  # the same interpreter, no egress
    assert ran_second.state == "kept", ran_second.state_note
    _seen(ran_first), _seen(ran_second)
    assert len(used_first.connections) == 1 and len(used_second.connections) == 1
    assert ran_none.status == "error" and ran_none.state == "kept", ran_none.stderr
    assert ran_none.error is not None and NO_NETWORK in ran_none.error, ran_none.stderr


async def test_pyfetch_gets_from_an_allowed_host_on_pyodide(
    guest: Guest, upstream: Upstream, target: Target
) -> None:
    lease = await guest.lease()
    if target.kind != "pyodide":  # Pyodide's own module: other guests have none
        result = await guest.run("import pyodide.http\n", egress=lease)
        await guest.proxy.release(lease)
        assert result.error is not None
        assert result.error.startswith("ModuleNotFoundError"), result.stderr
        return
    result = await guest.run(
        "from pyodide.http import pyfetch\n"
        f"r = await pyfetch('https://{ALLOWED}:{upstream.https_port}/echo?f=1',\n"
        "                  method='POST', body='hi', headers={'X-Test': 'pyfetch'})\n"
        "print(r.status, r.ok)\n"
        "print(await r.string())\n",
        egress=lease,
    )
    await guest.proxy.release(lease)
    seen = _seen(result)
    assert result.stdout.splitlines()[0] == "200 True"
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/echo?f=1", "hi")
    assert seen["headers"]["x-test"] == "pyfetch"


REQUESTS_PACKAGES = ("requests", "urllib3", "idna", "certifi", "charset_normalizer")
"""`requests` and what it imports, copied from the test's own environment (pure Python: the
compiled speed-ups of charset_normalizer are left out, it falls back on its `.py` twins)."""


async def test_requests_reaches_an_allowed_host_and_meets_the_refusal(
    guest: Guest, upstream: Upstream
) -> None:
    packages = Path(requests.__file__).parents[1]
    for name in REQUESTS_PACKAGES:
        shutil.copytree(
            packages / name,
            guest.workspace.site / name,
            ignore=shutil.ignore_patterns("*.so", "__pycache__"),
        )
    lease = await guest.lease()
    result = await guest.run(
        "import requests\n"
        f"r = requests.post('https://{ALLOWED}:{upstream.https_port}/echo', json={{'a': 1}})\n"
        "print(r.status_code, r.json()['body'])\n"
        "try:\n"
        f"    requests.get('https://{REFUSED}/')\n"
        "except PermissionError as e:\n"
        "    print('refused:', e)\n",
        egress=lease,
    )
    await guest.proxy.release(lease)
    assert result.status == "ok", result.stderr
    assert result.stdout.splitlines() == [
        '200 {"a": 1}',
        f"refused: egress to {REFUSED}:443 refused by policy rule {RULE}",
    ]
