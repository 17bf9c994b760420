"""The runner's egress wiring: a call whose route says `egress` gets a lease, its connections
are audited and counted, its figures and refusals come back in the result, its bytes are
charged to the window quota (a refused call is charged nothing, a restart forgets nothing).

The engine here is a stand-in guest on the host (`HostGuest`): its "code" is a list of URLs,
fetched through the lease exactly as a guest's urllib would (proxy URL with the run's
credentials, the proxy's CA). The engines' own guests are tested by their packages.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from runner import Caller, Config, Service, open_service
from sandboxes import Capabilities, ExecutionPlan, FakeEngine, RunResult, Usage

from ._client import fetch
from ._origin import Origin
from .fixtures import egress_policy

pytestmark = pytest.mark.anyio

ROUTE = "/tools/run_code/quotas/network"
TOKEN = "tok-4f1c9e2b7d"


class HostGuest(FakeEngine):
    """Runs "code" `{"get": [URL, ...], "headers": {...}}` by fetching each URL through the
    plan's lease; prints `STATUS URL` (and the refusal) per URL, then the last body."""

    def __init__(self) -> None:
        super().__init__(
            capabilities=Capabilities(persistent_state=True, networks=frozenset({"none", "egress"}))
        )

    async def run(self, plan: ExecutionPlan) -> RunResult:
        self.plans.append(plan)
        assert plan.egress is not None, "a plan whose network is egress carries a lease"
        asked = json.loads(plan.program.source)
        environment = dict(plan.egress.environment)
        headers = {
            k: v.replace("$API_TOKEN", environment.get("API_TOKEN", ""))
            for k, v in asked.get("headers", {}).items()
        }
        lines, body = [], b""
        for url in asked["get"]:
            try:
                answer = await fetch(plan.egress, url, headers=headers)
            except (OSError, http.client.HTTPException) as exc:  # as the code would see it
                lines.append(f"failed {url} {type(exc).__name__}")
                continue
            lines.append(f"{answer.status} {url} {answer.refused or ''}".rstrip())
            body = answer.body
        stdout = "\n".join(lines) + "\n" + body.decode(errors="replace")
        return RunResult(status="ok", stdout=stdout, stderr="", exit_code=0, usage=Usage(1.0))


ALLOW_API = (
    '{allow: ["api.test:%d", "127.0.0.1"], secrets: [token], max_connections_per_call: 3, '
    "limits: [{max_bytes: %d, window: hour, scope: grant}]}"
)


@asynccontextmanager
async def _service(
    tmp_path: Path, origin: Origin, *, window_bytes: int = 10_000_000
) -> AsyncIterator[tuple[Service, HostGuest]]:
    engine = HostGuest()
    network = ALLOW_API % (origin.https_port, window_bytes)
    config = Config(
        policy_path=egress_policy(tmp_path, origin, network),
        state_dir=tmp_path / "state",
        tool_sets=("native",),
        clock=time.time,
    )
    async with open_service(config, engines={"wasm": engine}) as service:
        yield service, engine


def _audit(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "audit.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["event"] == event]


def _code(*urls: str, headers: dict[str, str] | None = None) -> str:
    return json.dumps({"get": list(urls), "headers": headers or {}})


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDGATE_TEST_EGRESS_TOKEN", TOKEN)


async def test_a_run_reaches_the_allowed_host_and_is_refused_elsewhere(
    tmp_path: Path, origin: Origin, proxy_ready: None
) -> None:
    api = f"https://api.test:{origin.https_port}/echo"
    other = f"https://other.test:{origin.https_port}/echo"
    caller = Caller(grant="local", session="s1")
    async with _service(tmp_path, origin) as (service, _engine):
        result = await service.call_tool("run_code", {"code": _code(api, other)}, caller)
        metrics = service.metrics.render().decode()

    payload = result.structured_content
    assert payload is not None
    refusal = f"egress to other.test:{origin.https_port} refused by policy rule {ROUTE}"
    assert payload["stdout"].splitlines()[:2] == [f"200 {api}", f"403 {other} {refusal}"]
    network = payload["usage"]["network"]
    assert network["connections"] == 1
    assert network["bytes_up"] > 0 and network["bytes_down"] > 0
    assert network["refused"] == [
        f"{refusal}: other.test resolved to 127.0.0.2, a loopback address; only an allow entry "
        "naming that address or its network reaches it"
    ]
    assert network["refused"][0] in payload["notes"]
    records = _audit(tmp_path, "egress")
    assert [(r["decision"], r["egress"]["host"], r["egress"]["address"]) for r in records] == [
        ("allow", "api.test", "127.0.0.1"),
        ("deny", "other.test", "127.0.0.2"),
    ]
    assert records[0]["rule"] == f"{ROUTE}/allow/1"  # the loopback address needs its entry
    assert {r["id"] for r in records} == {_audit(tmp_path, "decision")[0]["id"]}
    assert records[0]["session"] == "s1"
    up = network["bytes_up"]
    assert f'sandgate_egress_bytes_total{{direction="up",grant="local"}} {float(up)}' in metrics
    assert 'sandgate_egress_connections_total{decision="deny",grant="local"} 1.0' in metrics


async def test_a_secret_reaches_its_host_and_never_comes_back(
    tmp_path: Path, origin: Origin, proxy_ready: None
) -> None:
    api = f"https://api.test:{origin.https_port}/echo"
    code = _code(api, headers={"Authorization": "Bearer $API_TOKEN"})
    async with _service(tmp_path, origin) as (service, engine):
        result = await service.call_tool("run_code", {"code": code}, Caller())
    (plan,) = engine.plans

    assert plan.egress is not None
    placeholder = dict(plan.egress.environment)["API_TOKEN"]
    assert origin.received[-1]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    payload = result.structured_content
    assert payload is not None
    assert f"Bearer {placeholder}" in payload["stdout"]
    assert TOKEN not in (tmp_path / "state" / "audit.jsonl").read_text()
    assert TOKEN not in json.dumps(payload)


async def test_bytes_are_charged_to_the_window_and_survive_a_restart(
    tmp_path: Path, origin: Origin, proxy_ready: None
) -> None:
    big = f"https://api.test:{origin.https_port}/bytes/150000"
    async with _service(tmp_path, origin, window_bytes=200_000) as (service, _):
        first = await service.call_tool("run_code", {"code": _code(big)}, Caller())
    async with _service(tmp_path, origin, window_bytes=200_000) as (service, _):
        second = await service.call_tool("run_code", {"code": _code(big)}, Caller())
        third = await service.call_tool("run_code", {"code": _code(big)}, Caller())

    assert first.structured_content is not None and second.structured_content is not None
    assert first.structured_content["usage"]["network"]["cut"] is False
    assert second.structured_content["usage"]["network"]["cut"] is True  # the window's rest
    assert second.structured_content["stdout"].startswith(f"failed {big} IncompleteRead")
    assert third.structured_content is not None
    assert third.structured_content["status"] == "denied"
    assert third.structured_content["rule"] == f"{ROUTE}/limits/0"
    outcomes = _audit(tmp_path, "outcome")
    assert len(outcomes) == 2  # the refused call ran nothing and was charged nothing


async def test_the_tool_description_says_where_the_route_goes(
    tmp_path: Path, origin: Origin
) -> None:
    async with _service(tmp_path, origin) as (service, _):
        (tool,) = [t for t in service.list_tools("local") if t.name == "run_code"]

    assert tool.description is not None
    assert f"HTTP(S) only to api.test:{origin.https_port}, 127.0.0.1, through" in tool.description
    assert tool.annotations is not None and tool.annotations.open_world_hint is True
