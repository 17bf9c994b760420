"""Egress on every engine, over real streamable HTTP, three grants at once: each grant's plain
`urllib` reaches the allowed host through the proxy with the brokered secret substituted, a
refused host and a leak of the placeholder raise `PermissionError` naming the rule, every
connection is audited under the grant that made it, and one grant that spends its byte quota
is cut off without touching the others' quotas. The origin servers are loopback servers this
test starts (`tests/egress/_origin.py`), reached under names the proxy's resolver maps."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.egress._origin import Origin
from tests.egress.fixtures import require_mitmproxy
from tests.tenancy._server import GRANTS, engine_params, tenant_policy, tenant_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SECRET = "s3cr3t-of-the-operator-5d1c0a"
ROUTE = "/tools/run_code/quotas/network"
QUOTA_BYTES = 256 * 1024
"""Each grant's egress bytes per hour; the download below is larger."""

FETCH = """
import os, urllib.request
token = os.environ["API_TOKEN"]
request = urllib.request.Request(
    "https://api.test:{port}/echo?who={grant}", headers={{"Authorization": "Bearer " + token}}
)
with urllib.request.urlopen(request, timeout=20) as answer:
    print("allowed", answer.status, answer.read().decode().count("Bearer " + token))
for url in ("https://other.test:{port}/echo", "https://other.test:{port}/echo?t=" + token):
    try:
        urllib.request.urlopen(url, timeout=20)
    except PermissionError as refused:
        print("refused", str(refused).split(":")[0])
print("placeholder", token != {secret!r})
"""

SPEND = """
import urllib.request
try:
    urllib.request.urlopen("http://api.test:{port}/bytes/{size}", timeout=20).read()
    print("whole")
except Exception as cut:
    print("cut", type(cut).__name__)
"""

AGAIN = """
import urllib.request
urllib.request.urlopen("http://api.test:{port}/echo", timeout=20).read()
print("reached")
"""


def _egress_policy(engine: str, origin: Origin) -> str:
    route = (
        "  run_code:\n    quotas:\n      network:\n"
        "        allow: ['api.test', '127.0.0.1']\n"
        "        secrets: [token]\n"
        f"        limits: [{{max_bytes: {QUOTA_BYTES}, window: hour, scope: grant}}]\n"
    )
    sections = (
        "secrets:\n"
        "  - {name: token, env: SANDGATE_TEST_EGRESS_SECRET, hosts: [api.test],"
        " variable: API_TOKEN}\n"
        "server:\n  egress:\n"
        "    hosts: {api.test: 127.0.0.1, other.test: 127.0.0.2}\n"
        f"    upstream_ca: {origin.ca}\n"
    )
    return tenant_policy(engine, tools=route, sections=sections, state="fresh")


async def _run(client: Client, code: str) -> dict[str, Any]:
    result = await client.call_tool("run_code", {"code": code})
    assert result.structured_content is not None, result.content
    payload = dict(result.structured_content)
    assert payload["status"] == "ok", payload
    return payload


async def _fetch_as(client: Client, grant: str, port: int) -> dict[str, Any]:
    payload = await _run(client, FETCH.format(port=port, grant=grant, secret=SECRET))
    assert payload["stdout"].splitlines() == [
        "allowed 200 1",
        "refused egress to other.test",
        "refused egress to other.test",
        "placeholder True",
    ], (grant, payload)
    return payload


@pytest.mark.parametrize("engine", engine_params())
async def test_every_grant_reaches_only_its_allowed_host_and_spends_only_its_own_quota(
    tmp_path: Path, engine: str, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_mitmproxy()
    monkeypatch.setenv("SANDGATE_TEST_EGRESS_SECRET", SECRET)
    port = origin.https_port
    with tenant_server(tmp_path, engine, policy=_egress_policy(engine, origin)) as server:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(server.client(g)) for g in GRANTS]
            fetched = await asyncio.gather(
                *(_fetch_as(c, g, port) for c, g in zip(clients, GRANTS, strict=True))
            )
            for payload in fetched:
                network = payload["usage"]["network"]
                assert network["connections"] >= 1 and network["bytes_down"] > 0, network
                assert len(network["refused"]) == 2, network
                assert all(ROUTE in r for r in network["refused"]), network

            alice, bob = clients[0], clients[1]
            spent = await _run(alice, SPEND.format(port=origin.http_port, size=2 * QUOTA_BYTES))
            assert spent["stdout"].split()[0] == "cut", spent
            assert spent["usage"]["network"]["cut"] is True, spent["usage"]
            stopped = await alice.call_tool("run_code", {"code": AGAIN.format(port=0)})
            denial = dict(stopped.structured_content or {})
            assert denial.get("status") == "denied", stopped.content
            assert denial["rule"] == f"{ROUTE}/limits/0", denial
            reached = await _run(bob, AGAIN.format(port=origin.http_port))
            assert reached["stdout"].strip() == "reached", reached

        seen = [f"who={g}" for g in GRANTS]
        secrets_sent = [r for r in origin.received if r["path"].split("?")[-1] in seen]
        assert {r["headers"]["Authorization"] for r in secrets_sent} == {f"Bearer {SECRET}"}
        audit = server.audit()
        connections = [r for r in audit if r.get("event") == "egress"]
        assert {r["grant"] for r in connections} == set(GRANTS), connections
        hosts = {(r["egress"]["host"], r["decision"]) for r in connections}
        assert hosts == {("api.test", "allow"), ("other.test", "deny")}, connections
        assert SECRET not in json.dumps(audit)
        assert SECRET not in json.dumps(fetched)
