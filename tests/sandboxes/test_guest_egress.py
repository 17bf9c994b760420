"""The guest's egress module (`sandboxes/guest/sandgate_egress.py`) with every client a guest may
use: a proxy refusal raises `PermissionError(<the proxy's words>)` from `urllib.request`,
`http.client` and `requests` alike, for HTTPS (a refused CONNECT) and plain HTTP, as the
exception itself (not wrapped, no chained traceback); an allowed host is reached unchanged.

The module runs in a host interpreter (this venv has `requests`, the sandbox image has not)
started with a lease's proxy variables, against the real egress proxy and the loopback origin
servers of `tests/egress`."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from sandboxes.egress import EgressProxy, EgressVerdict
from tests.egress._origin import Origin

pytestmark = pytest.mark.anyio

GUEST = Path(__file__).resolve().parents[2] / "sandboxes" / "guest"
ALLOWED, REFUSED = "api.test", "other.test"
RULE = "/tools/run_code/quotas/network"
RUN_TIMEOUT_S = 60.0

ATTEMPTS = """
import http.client, json, sys, urllib.request
sys.path.insert(0, sys.argv[1])
import sandgate_egress
sandgate_egress.install()
import requests

host, http_port, https_port, proxy_port = sys.argv[2], *map(int, sys.argv[3:6])

def tunnel():
    connection = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=20)
    connection.set_tunnel(f"{host}:{https_port}", headers={"Proxy-Authorization": sys.argv[6]})
    connection.request("GET", "/")
    return connection.getresponse().read()

def plain():
    connection = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=20)
    connection.request("GET", f"http://{host}:{http_port}/", headers={
        "Proxy-Authorization": sys.argv[6]})
    return connection.getresponse().read()

attempts = {
    "urllib https": lambda: urllib.request.urlopen(f"https://{host}:{https_port}/", timeout=20),
    "urllib http": lambda: urllib.request.urlopen(f"http://{host}:{http_port}/", timeout=20),
    "http.client https": tunnel,
    "http.client http": plain,
    "requests https": lambda: requests.get(f"https://{host}:{https_port}/", timeout=20),
    "requests http": lambda: requests.get(f"http://{host}:{http_port}/", timeout=20),
}
seen = {}
for name, attempt in attempts.items():
    try:
        attempt()
        seen[name] = "reached"
    except PermissionError as exc:
        bare = exc.__cause__ is None and (exc.__suppress_context__ or exc.__context__ is None)
        seen[name] = f"PermissionError: {exc}" + ("" if bare else " (wrapped)")
    except Exception as exc:
        seen[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(seen))
"""


def decide(host: str, port: int, address: str | None) -> EgressVerdict:
    if host == ALLOWED:
        return EgressVerdict(True, f"{RULE}/allow/0", f"{host} is allowed")
    return EgressVerdict(False, RULE, f"no allow rule names {host}")


async def attempts(proxy: EgressProxy, origin: Origin, host: str) -> dict[str, str]:
    """How each client's request to `host` ended, in a guest-like interpreter with a lease."""
    lease = await proxy.lease(decide=decide, quota_rule=RULE)
    try:
        url = lease.proxy_url()
        authorization = "Basic " + base64.b64encode(lease.credentials.encode()).decode()
        environment = {
            **{k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
            "HTTP_PROXY": url,
            "HTTPS_PROXY": url,
            "NO_PROXY": "",
            "SSL_CERT_FILE": str(lease.ca_certificate),
            "REQUESTS_CA_BUNDLE": str(lease.ca_certificate),
        }
        arguments = [str(GUEST), host, str(origin.http_port), str(origin.https_port)]
        arguments += [str(lease.port), authorization]
        with anyio.fail_after(RUN_TIMEOUT_S):
            done = await anyio.run_process(
                [sys.executable, "-c", ATTEMPTS, *arguments], env=environment, check=False
            )
    finally:
        await proxy.release(lease)
    assert done.returncode == 0, done.stderr.decode()
    seen: dict[str, str] = json.loads(done.stdout)
    return seen


async def test_a_refusal_is_permission_error_from_every_client(
    proxy: EgressProxy, origin: Origin
) -> None:
    seen = await attempts(proxy, origin, REFUSED)
    https = (
        f"PermissionError: egress to {REFUSED}:{origin.https_port} refused by policy rule {RULE}"
    )
    http = f"PermissionError: egress to {REFUSED}:{origin.http_port} refused by policy rule {RULE}"
    assert seen == {
        "urllib https": https,
        "urllib http": http,
        "http.client https": https,
        "http.client http": http,
        "requests https": https,
        "requests http": http,
    }


async def test_an_allowed_host_is_reached_unchanged(proxy: EgressProxy, origin: Origin) -> None:
    seen = await attempts(proxy, origin, ALLOWED)
    assert set(seen.values()) == {"reached"}, seen
