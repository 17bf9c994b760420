"""`run_code` on the real wasm engine with an egress route: the guest's plain urllib reaches
the allowed host, a refused one raises `PermissionError` naming the rule, a brokered secret's
placeholder becomes its value only on the way to its host, and the result reports it all; a
grant role's own route (`roles.NAME.quotas.network`) reaches its host, another grant's run has
no network."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runner import Caller, Config, open_service
from sandboxes import WasmEngine

from ._origin import Origin
from .fixtures import egress_policy

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

TOKEN = "tok-wasm-93be1d"
ROUTE = "/tools/run_code/quotas/network"

CODE = """
import os, urllib.request
request = urllib.request.Request(
    "https://api.test:{port}/echo", headers={{"Authorization": "Bearer " + os.environ["API_TOKEN"]}}
)
with urllib.request.urlopen(request) as answer:
    print(answer.status, answer.read().decode().count(os.environ["API_TOKEN"]))
try:
    urllib.request.urlopen("https://other.test:{port}/echo")
except PermissionError as refused:
    print("refused:", refused)
"""


async def test_run_code_on_wasm_goes_through_the_route(
    tmp_path: Path,
    origin: Origin,
    wasm_engine: WasmEngine,
    proxy_ready: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDGATE_TEST_EGRESS_TOKEN", TOKEN)
    policy = egress_policy(tmp_path, origin, '{allow: ["api.test", "127.0.0.1"], secrets: [token]}')
    config = Config(
        policy_path=policy, state_dir=tmp_path / "state", tool_sets=("native",), clock=time.time
    )
    async with open_service(config, engines={"wasm": wasm_engine}) as service:
        result = await service.call_tool(
            "run_code", {"code": CODE.format(port=origin.https_port)}, Caller()
        )

    payload = result.structured_content
    assert payload is not None
    assert payload["status"] == "ok", payload
    refusal = f"egress to other.test:{origin.https_port} refused by policy rule {ROUTE}"
    assert payload["stdout"].splitlines() == ["200 1", f"refused: {refusal}"]
    assert origin.received[-1]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    network = payload["usage"]["network"]
    assert network["connections"] == 1
    assert network["refused"][0].startswith(refusal)
    assert TOKEN not in json.dumps(payload)
    assert TOKEN not in (tmp_path / "state" / "audit.jsonl").read_text()


ROLE_CODE = """
import urllib.request
try:
    with urllib.request.urlopen("https://api.test:{port}/echo") as answer:
        print("reached", answer.status)
except OSError as refused:
    print("refused:", type(refused).__name__)
"""


async def test_a_grant_role_gets_its_own_route_on_wasm(
    tmp_path: Path, origin: Origin, wasm_engine: WasmEngine, proxy_ready: None
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"""
version: '1'
default: deny
grants:
  alice: {{token_sha256: "{"a" * 64}", roles: [analyst]}}
  bob: {{token_sha256: "{"b" * 64}", roles: [viewer]}}
roles:
  analyst:
    quotas:
      network: {{allow: ["api.test", "127.0.0.1"], max_connections_per_call: 2}}
server:
  egress:
    hosts: {{api.test: 127.0.0.1}}
    upstream_ca: {origin.ca}
tools:
  run_code: {{}}
"""
    )
    config = Config(
        policy_path=policy, state_dir=tmp_path / "state", tool_sets=("native",), clock=time.time
    )
    code = {"code": ROLE_CODE.format(port=origin.https_port)}
    async with open_service(config, engines={"wasm": wasm_engine}) as service:
        analyst = await service.call_tool("run_code", code, Caller(grant="alice", session="a"))
        viewer = await service.call_tool("run_code", code, Caller(grant="bob", session="b"))
        described = {
            grant: next(t for t in service.list_tools(grant) if t.name == "run_code")
            for grant in ("alice", "bob")
        }

    assert analyst.structured_content is not None and viewer.structured_content is not None
    assert analyst.structured_content["stdout"] == "reached 200\n", analyst.structured_content
    assert analyst.structured_content["usage"]["network"]["connections"] == 1
    assert viewer.structured_content["status"] == "ok", viewer.structured_content
    assert viewer.structured_content["stdout"] == "refused: URLError\n"  # no sockets at all
    assert viewer.structured_content["usage"].get("network") is None
    audit = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    egress = [json.loads(line) for line in audit if '"event":"egress"' in line.replace(" ", "")]
    assert [(r["grant"], r["decision"], r["rule"]) for r in egress] == [
        ("alice", "allow", "/roles/analyst/quotas/network/allow/1")
    ]
    assert "api.test" in (described["alice"].description or "")
    assert "api.test" not in (described["bob"].description or "")
