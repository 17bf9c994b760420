"""The policy routes a tool to an engine: `engine: container` (runc), `engine: gvisor` (runsc)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client

from policies import read_audit
from runner import Caller, build_server
from runner.tools import Refused
from sandboxes import WasmEngine
from tests.conftest import IN_CI, service_for
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.container, pytest.mark.slow]


def _docker_ready() -> None:
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode
    ):
        if IN_CI:
            pytest.fail("dockerd is required in CI (scripts/docker-setup.sh starts it)")
        pytest.skip("no Docker daemon here")


@pytest.mark.parametrize(("profile", "runtime"), [("container", "runc"), ("gvisor", "runsc")])
async def test_a_tool_routed_to_a_container_profile_runs_there(
    wasm_engine: WasmEngine, tmp_path: Path, profile: str, runtime: str
) -> None:
    _docker_ready()
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip("the container engine's workspace hand-over needs root here")
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        f"tools:\n  run_python_code: {{engine: {profile}}}\n  run_code: {{}}\n"
    )
    probe = "import sys; print(sys.platform)"
    async with (
        service_for(tmp_path / "state", wasm_engine, policy) as service,
        Client(build_server(service)) as client,
    ):
        routed = await client.call_tool("run_python_code", {"code": probe})
        assert isinstance(routed, types.CallToolResult)
        assert not routed.is_error, text_of(routed)
        assert text_of(routed).strip() == "linux"  # a real Linux container, not the WASI guest
        running = service.engines.running()
        assert f"container:{runtime}" in running
        wasm = await client.call_tool("run_code", {"code": "import sys; print(sys.platform)"})
        assert isinstance(wasm, types.CallToolResult) and wasm.structured_content is not None
        assert wasm.structured_content["stdout"].strip() == "wasi"


@pytest.mark.wasm
async def test_a_call_needing_what_its_engine_lacks_is_refused_naming_both(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    """`network: mirror` on the wasm engine (which has no network at all) is refused before
    anything runs, naming the engine and the capability; it counts nothing and is audited."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        "tools:\n"
        "  run_code:\n"
        "    quotas: {network: mirror}\n"
        "    limits:\n"
        "      - {counter: runs, window: minute, max: 1, scope: grant}\n"
    )
    async with service_for(tmp_path / "state", wasm_engine, policy) as service:
        caller = Caller(grant="alice", session="s")
        for _ in range(2):  # the second is refused the same way: the first counted nothing
            outcome = await service.outcome("run_code", {"code": "print(1)"}, caller)
            assert isinstance(outcome, Refused)
            assert outcome.rule == "/engines/wasm"
            assert "wasm engine" in outcome.reason and "network=mirror" in outcome.reason
        answer = await service.call_tool("run_code", {"code": "print(1)"}, caller)
        assert answer.structured_content is not None
        assert answer.structured_content["status"] == "denied"
        assert answer.structured_content["rule"] == "/engines/wasm"
    outcomes = [r for r in read_audit(tmp_path / "state" / "audit.jsonl") if r.event == "outcome"]
    assert [(r.outcome, r.status) for r in outcomes] == [("refused", "refused")] * 3
