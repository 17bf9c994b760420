"""The Mcp Pyodide tool set over MCP on the real Deno + Pyodide engine, default policy."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from runner import Config, build_server, open_service
from runner._mounts import parse_mount
from sandboxes import WasmEngine
from sandboxes.pyodide import setup_pyodide
from tests.conftest import IN_CI

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide, pytest.mark.slow]

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
UPSTREAM = {
    "pyodide_execute": {"code", "timeout"},
    "pyodide_install-packages": {"package"},
    "pyodide_get-mount-points": set(),
    "pyodide_list-mounted-directory": {"mountName"},
    "pyodide_read-image": {"mountName", "imagePath"},
}


@pytest.fixture(scope="module")
def pyodide_assets() -> Path:
    try:
        return setup_pyodide()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"the Pyodide assets are required in CI: {exc}")
        pytest.skip(f"Pyodide is not available here: {exc}")


@pytest.fixture
async def client(
    wasm_engine: WasmEngine, tmp_path: Path, pyodide_assets: Path
) -> AsyncIterator[Client]:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "chart.png").write_bytes(PNG)
    (shared / "notes.txt").write_text("hello")
    config = Config(state_dir=tmp_path / "state", mounts=(parse_mount(f"shared={shared}"),))
    async with (
        open_service(config, engines={"wasm": wasm_engine}) as service,
        Client(build_server(service)) as c,
    ):
        yield c


def _text(result: Any) -> str:
    assert isinstance(result, types.CallToolResult)
    return "".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def test_the_five_tools_are_listed_with_upstream_arguments(client: Client) -> None:
    listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    for name, arguments in UPSTREAM.items():
        assert set(listed[name].input_schema.get("properties", {})) == arguments, name
    assert listed["pyodide_execute"].input_schema["properties"]["timeout"]["default"] == 5000


async def test_output_and_final_value_come_back_and_state_is_kept(client: Client) -> None:
    first = await client.call_tool("pyodide_execute", {"code": "x = 20\nprint('hi')\nx + 1"})
    assert not first.is_error and "hi" in _text(first) and "Result: 21" in _text(first)
    second = await client.call_tool("pyodide_execute", {"code": "x * 2"})
    assert "Result: 40" in _text(second)


async def test_an_exception_returns_the_traceback_as_an_error(client: Client) -> None:
    result = await client.call_tool("pyodide_execute", {"code": "def f():\n    1/0\nf()"})
    assert result.is_error and "ZeroDivisionError" in _text(result)


async def test_the_timeout_stops_the_code_and_the_next_call_works(client: Client) -> None:
    stopped = await client.call_tool(
        "pyodide_execute", {"code": "while True: pass", "timeout": 1000}
    )
    assert stopped.is_error and "timeout" in _text(stopped)
    again = await client.call_tool("pyodide_execute", {"code": "1 + 1"})
    assert "Result: 2" in _text(again)


async def test_mount_points_listing_and_images(client: Client) -> None:
    mounts = json.loads(_text(await client.call_tool("pyodide_get-mount-points", {})))
    assert [m["name"] for m in mounts] == ["workspace", "shared"]
    listing = json.loads(
        _text(await client.call_tool("pyodide_list-mounted-directory", {"mountName": "shared"}))
    )
    assert sorted(e["name"] for e in listing["entries"]) == ["chart.png", "notes.txt"]
    image = await client.call_tool(
        "pyodide_read-image", {"mountName": "shared", "imagePath": "chart.png"}
    )
    assert isinstance(image, types.CallToolResult) and not image.is_error
    [block] = [b for b in image.content if isinstance(b, types.ImageContent)]
    assert base64.b64decode(block.data) == PNG and block.mime_type == "image/png"


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "notes.txt"])
async def test_read_image_refuses_paths_out_of_the_mount_and_non_images(
    client: Client, path: str
) -> None:
    result = await client.call_tool(
        "pyodide_read-image", {"mountName": "shared", "imagePath": path}
    )
    assert result.is_error and "argument 'imagePath'" in _text(result)
    assert "root:" not in _text(result)


async def test_an_image_the_code_writes_comes_back_and_as_a_resource(client: Client) -> None:
    encoded = base64.b64encode(PNG).decode()
    code = f"import base64\nopen('/workspace/dot.png', 'wb').write(base64.b64decode({encoded!r}))"
    result = await client.call_tool("pyodide_execute", {"code": code})
    assert not result.is_error, _text(result)
    assert any(isinstance(b, types.ImageContent) for b in result.content)
    assert "/workspace/dot.png" in _text(result)
    uris = [str(r.uri) for r in (await client.list_resources()).resources]
    assert "file:///workspace/dot.png" in uris and "file:///mounts/shared/notes.txt" in uris
    read = await client.read_resource("file:///mounts/shared/notes.txt")
    assert isinstance(read.contents[0], types.TextResourceContents)
    assert read.contents[0].text == "hello"


async def test_installs_without_a_mirror_are_refused_item_by_item(client: Client) -> None:
    result = await client.call_tool("pyodide_install-packages", {"package": "six attrs"})
    assert result.is_error and "mirror" in _text(result)
    bad = await client.call_tool("pyodide_install-packages", {"package": "six --index-url=x"})
    assert bad.is_error and "argument 'package'" in _text(bad)


async def test_installs_come_from_the_mirror_and_import_in_the_session(
    wasm_engine: WasmEngine, tmp_path: Path, pyodide_assets: Path
) -> None:
    from runner.mirror import load_allowlist, sync_mirror

    allowlist = tmp_path / "allow.toml"
    allowlist.write_text('[packages]\npython-slugify = ">=8,<10"\n')
    mirror = tmp_path / "mirror"
    assert sync_mirror(load_allowlist(allowlist), mirror, engines=("pyodide",)).ok
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        f"packages: {{allowlist: '{allowlist}', mirror: '{mirror}'}}\n"
        "tools:\n  pyodide_execute: {engine: pyodide}\n  pyodide_install-packages: {}\n"
    )
    config = Config(policy_path=policy, state_dir=tmp_path / "state")
    async with (
        open_service(config, engines={"wasm": wasm_engine}) as service,
        Client(build_server(service)) as client,
    ):
        installed = await client.call_tool(
            "pyodide_install-packages", {"package": "python-slugify sixx"}
        )
        text = _text(installed)
        assert installed.is_error  # one of the two was refused
        assert "successfully installed package python-slugify" in text
        assert "sixx" in text and "allow" in text
        used = await client.call_tool(
            "pyodide_execute", {"code": "import slugify\nslugify.slugify('Hello World')"}
        )
        assert "hello-world" in _text(used), _text(used)
