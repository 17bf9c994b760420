"""sandgate end to end through the official MCP TypeScript SDK client (tests/e2e_ts/client.mjs,
`@modelcontextprotocol/sdk` pinned in package-lock.json, installed by `npm ci` from
scripts/test.sh), over stdio and streamable HTTP: every tool's result checked by the SDK's
schemas (and `run_code`'s by its outputSchema), the tools each shipped policy lists, the sizes
of big outputs and images, and no answer to a cancelled request."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from policies import load_policy
from runner.tools import TOOLS_BY_NAME
from tests.processes import sandgate_command, serving_http

pytestmark = [pytest.mark.wasm, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
POLICIES = HERE.parents[1] / "policies"
SDK = HERE / "node_modules" / "@modelcontextprotocol" / "sdk"
CLIENT_TIMEOUT_S = 600.0
TOKEN = "e2e-typescript-client-token"
TEXT_BUDGET = 64 * 1024
IMAGE_CAP = 4608 * 1024
BIG_PRINT = 300_000

READ_ONLY = {
    "pyodide_get-mount-points",
    "pyodide_list-mounted-directory",
    "pyodide_read-image",
    "list_snapshots",
}
NOISE_PNG = (
    "import os\nfrom PIL import Image\n"
    "Image.frombytes('RGB', (1500, 1500), os.urandom(1500 * 1500 * 3)).save('noise.png')\n"
)
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("run_python_code", {"code": f"print('y' * {BIG_PRINT})"}),
    (
        "save_to_file_and_run",
        {"file_name": "calc.py", "code": "c = 6 * 7", "variable_to_return": "c"},
    ),
    ("run_python_file", {"file_name": "calc.py", "variable_to_return": "c"}),
    ("pip_install_package", {"package_name": "six"}),
    ("run_code", {"code": "print(1)"}),
    ("run_code", {"code": "1/0"}),
    ("run_code", {"code": "print(1)", "timeout_s": -1}),
    ("run_code", {"code": f"print('z' * {BIG_PRINT})"}),
    ("run_code", {"code": NOISE_PNG}),
    ("pyodide_execute", {"code": "1 + 1"}),
    ("pyodide_install-packages", {"package": "six"}),
    ("pyodide_get-mount-points", {}),
    ("pyodide_list-mounted-directory", {"mountName": "workspace"}),
    ("pyodide_read-image", {"mountName": "workspace", "imagePath": "noise.png"}),
]
"""A call of every tool the default policy lists (an error result is a result too)."""


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None or not SDK.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("node and `npm ci` in tests/e2e_ts are needed (scripts/test.sh does it)")
        pytest.skip("needs node and `npm ci` in tests/e2e_ts (scripts/test.sh runs it)")
    return found


def run_client(node: str, folder: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Run client.mjs with `plan` and return its report."""
    path = folder / "plan.json"
    path.write_text(json.dumps(plan))
    done = subprocess.run(
        [node, str(HERE / "client.mjs"), str(path)],
        capture_output=True,
        timeout=CLIENT_TIMEOUT_S,
        cwd=HERE,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def stdio_plan(policy: Path, state: Path) -> dict[str, Any]:
    return {
        "transport": "stdio",
        "command": sandgate_command(),
        "args": ["serve", "--policy", str(policy), "--state-dir", str(state), "--workers", "2"],
        "env": {k: v for k, v in os.environ.items() if k != "SANDGATE_TEST_SECRET"},
    }


@contextmanager
def plan_for(transport: str, policy: Path, folder: Path) -> Iterator[dict[str, Any]]:
    """How the client reaches a server on `policy` over `transport` (HTTP: with a grant)."""
    if transport == "stdio":
        yield stdio_plan(policy, folder / "state")
        return
    granted = folder / "granted.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    granted.write_text(policy.read_text() + f"\ngrants:\n  e2e: {{token_sha256: '{digest}'}}\n")
    with serving_http(granted, folder / "state", workers=2) as (url, _):
        yield {"transport": "http", "url": url, "token": TOKEN}


def shipped_listing(name: str) -> set[str]:
    if name == "eval-harness.yaml":
        return {"run_code", "run_python_code"}
    if name == "python-no-net-no-install.yaml":
        return {
            "run_python_code",
            "save_to_file_and_run",
            "run_python_file",
            "run_code",
            "pyodide_execute",
        }
    return set(load_policy(POLICIES / name).tools) & set(TOOLS_BY_NAME)


@pytest.mark.parametrize(
    "policy", ["default.yaml", "eval-harness.yaml", "python-no-net-no-install.yaml"]
)
def test_each_shipped_policy_lists_what_it_allows(node: str, tmp_path: Path, policy: str) -> None:
    report = run_client(node, tmp_path, stdio_plan(POLICIES / policy, tmp_path / "state"))
    tools = {t["name"]: t for t in report["tools"]}
    assert set(tools) == shipped_listing(policy)
    for name, tool in tools.items():
        annotations = tool["annotations"]
        assert tool["title"] and annotations is not None, name
        assert annotations["openWorldHint"] is False, name
        assert annotations["readOnlyHint"] is (name in READ_ONLY), name
        assert "No network" in tool["description"] or name not in {
            "run_python_code",
            "run_code",
            "pyodide_execute",
        }
    if "run_code" in tools:
        assert tools["run_code"]["output_schema"]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_every_tool_result_passes_the_sdk_schemas_and_fits_a_model(
    node: str, tmp_path: Path, transport: str
) -> None:
    with plan_for(transport, POLICIES / "default.yaml", tmp_path) as plan:
        plan["calls"] = [{"tool": tool, "arguments": args} for tool, args in CALLS]
        report = run_client(node, tmp_path, plan)
    calls = report["calls"]
    assert {t["name"] for t in report["tools"]} >= {tool for tool, _ in CALLS}
    assert [c for c in calls if c["sdk_error"]] == []

    big_print, _, _, _, ok, error, invalid, big_run_code, image, *rest = calls
    for big in (big_print, big_run_code):
        assert big["text_bytes"] + big["structured_bytes"] <= TEXT_BUDGET + 4096, big["tool"]
        assert big["linked_bytes"] == BIG_PRINT + 1, big["tool"]
    assert big_run_code["text_bytes"] < 2048  # the printed text is sent once: structured
    statuses = [c["structured"]["status"] for c in (ok, error, invalid)]
    assert statuses == ["ok", "error", "invalid"]
    assert image["image_bytes"] and all(0 < n <= IMAGE_CAP for n in image["image_bytes"])
    read_image = rest[-1]
    assert read_image["image_bytes"] and all(0 < n <= IMAGE_CAP for n in read_image["image_bytes"])
    assert report["stray"] == []


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_cancelled_request_gets_no_answer(node: str, tmp_path: Path, transport: str) -> None:
    with plan_for(transport, POLICIES / "default.yaml", tmp_path) as plan:
        plan["cancel"] = {
            "tool": "run_code",
            "arguments": {"code": "import time; time.sleep(4); print('late')"},
            "after_ms": 1500,
            "then": {"tool": "run_code", "arguments": {"code": "print('next')"}},
        }
        report = run_client(node, tmp_path, plan)
    cancel = report["cancel"]
    assert cancel["cancelled"]["sdk_error"]  # the client gave up on it
    assert cancel["then"]["structured"]["stdout"] == "next\n"
    assert report["stray"] == []  # no response to the cancelled request reached the client


def test_each_grant_sees_its_own_list_over_http(node: str, tmp_path: Path) -> None:
    tokens = {"alice": "token-of-alice", "bob": "token-of-bob"}
    grants = "".join(
        f"  {name}: {{token_sha256: '{hashlib.sha256(token.encode()).hexdigest()}'"
        f"{', roles: [admin]' if name == 'alice' else ''}}}\n"
        for name, token in tokens.items()
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"default: deny\ngrants:\n{grants}tools:\n  run_code: {{}}\n"
        "  run_python_code:\n    require: [{path: roles, op: contains, value: admin}]\n"
    )
    listed = {}
    with serving_http(policy, tmp_path / "state", workers=2) as (url, _):
        for name, token in tokens.items():
            plan = {"transport": "http", "url": url, "token": token}
            listed[name] = {t["name"] for t in run_client(node, tmp_path, plan)["tools"]}
    assert listed == {"alice": {"run_code", "run_python_code"}, "bob": {"run_code"}}
