"""The Python Code Runner tools over MCP (in-memory client, real wasm engine, default policy)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from runner import build_server, connection_scope
from sandboxes import WasmEngine
from tests.conftest import service_for
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

UPSTREAM_ARGUMENTS = {
    "run_python_code": {"code"},
    "save_to_file_and_run": {"file_name", "code", "variable_to_return", "overwrite"},
    "pip_install_package": {"package_name"},
    "run_python_file": {"file_name", "variable_to_return"},
}


async def _call(client: Client, tool: str, args: dict[str, Any]) -> types.CallToolResult:
    result = await client.call_tool(tool, args)
    assert isinstance(result, types.CallToolResult)
    return result


@pytest.fixture
async def client(wasm_engine: WasmEngine, tmp_path: Path) -> Any:
    async with (
        service_for(tmp_path / "state", wasm_engine) as service,
        Client(build_server(service)) as c,
    ):
        yield c


async def test_lists_the_upstream_tools_with_their_argument_names(client: Client) -> None:
    listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    for name, arguments in UPSTREAM_ARGUMENTS.items():
        assert arguments <= set(listed[name].input_schema["properties"]), name
    assert listed["save_to_file_and_run"].input_schema["properties"]["overwrite"]["default"] is True
    assert listed["run_python_code"].input_schema["required"] == ["code"]


async def test_run_python_code_prints_2(client: Client) -> None:
    result = await _call(client, "run_python_code", {"code": "print(1+1)"})
    assert not result.is_error and text_of(result).strip() == "2"


async def test_an_error_comes_back_as_error_text_with_the_traceback(client: Client) -> None:
    result = await _call(client, "run_python_code", {"code": "def f():\n    return 1/0\nf()"})
    text = text_of(result)
    assert result.is_error and text.startswith("Error")
    assert "ZeroDivisionError: division by zero" in text and "return 1/0" in text


async def test_save_to_file_and_run_returns_the_variable(client: Client) -> None:
    args = {"file_name": "calc.py", "code": "a=5\nb=15\nc=a*b", "variable_to_return": "c"}
    result = await _call(client, "save_to_file_and_run", args)
    assert not result.is_error and text_of(result) == "75"


async def test_overwrite_false_on_an_existing_file_says_it_exists(client: Client) -> None:
    args = {"file_name": "once.py", "code": "x = 1"}
    assert not (await _call(client, "save_to_file_and_run", args)).is_error
    again = await _call(client, "save_to_file_and_run", {**args, "overwrite": False})
    assert text_of(again) == "File once.py already exists"


async def test_run_python_file_finds_saved_files_in_the_session(client: Client) -> None:
    await _call(client, "save_to_file_and_run", {"file_name": "lib/m.py", "code": "v = 6 * 7"})
    result = await _call(
        client, "run_python_file", {"file_name": "lib/m.py", "variable_to_return": "v"}
    )
    assert text_of(result) == "42"


async def test_run_python_file_on_a_missing_file_is_an_error_message(client: Client) -> None:
    result = await _call(client, "run_python_file", {"file_name": "missing.py"})
    assert result.is_error and "No such file" in text_of(result)


async def test_a_missing_variable_is_reported_as_upstream_does(client: Client) -> None:
    result = await _call(client, "run_python_code", {"code": "x=1", "variable_to_return": "y"})
    assert text_of(result) == "Variable y not found"


@pytest.mark.parametrize(
    ("tool", "args", "argument"),
    [
        ("run_python_code", {}, "code"),
        ("run_python_code", {"code": 5}, "code"),
        ("run_python_code", {"code": "x", "extra": 1}, "extra"),
        ("run_python_code", {"code": "\ud800"}, "code"),
        ("save_to_file_and_run", {"file_name": "/etc/x.py", "code": "1"}, "file_name"),
        ("save_to_file_and_run", {"file_name": "../x.py", "code": "1"}, "file_name"),
        ("save_to_file_and_run", {"file_name": "a/../../x.py", "code": "1"}, "file_name"),
        ("save_to_file_and_run", {"file_name": "notes.txt", "code": "1"}, "file_name"),
        (
            "save_to_file_and_run",
            {"file_name": "x.py", "code": "1", "overwrite": "no"},
            "overwrite",
        ),
        ("run_python_file", {"file_name": "/etc/passwd.py"}, "file_name"),
        ("pip_install_package", {"package_name": 3}, "package_name"),
    ],
)
async def test_bad_input_names_the_argument(
    client: Client, tool: str, args: dict[str, Any], argument: str
) -> None:
    result = await _call(client, tool, args)
    assert result.is_error
    assert f"argument '{argument}'" in text_of(result)


async def test_an_unknown_tool_is_an_error_naming_what_is_served(client: Client) -> None:
    result = await _call(client, "rm_rf", {})
    assert result.is_error and "run_python_code" in text_of(result)


async def test_a_link_out_of_the_workspace_is_refused(
    client: Client, wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    await _call(client, "save_to_file_and_run", {"file_name": "seed.py", "code": "pass"})
    workspaces = list((tmp_path / "state" / "workspaces").glob("*/*/files"))
    assert len(workspaces) == 1
    outside = tmp_path / "outside.py"
    outside.write_text("secret = 'host file'")
    (workspaces[0] / "evil.py").symlink_to(outside)
    result = await _call(
        client, "run_python_file", {"file_name": "evil.py", "variable_to_return": "secret"}
    )
    assert result.is_error and "link" in text_of(result)
    write = await _call(client, "save_to_file_and_run", {"file_name": "evil.py", "code": "x=1"})
    assert write.is_error and outside.read_text() == "secret = 'host file'"


async def test_pip_install_without_a_mirror_refuses_clearly(client: Client) -> None:
    result = await _call(client, "pip_install_package", {"package_name": "requests"})
    assert result.is_error and "mirror" in text_of(result)


async def test_pip_install_refuses_options_and_urls_before_anything_runs(client: Client) -> None:
    for bad in ("--index-url=http://x y", "git+https://example.invalid/x", "../x.whl"):
        result = await _call(client, "pip_install_package", {"package_name": bad})
        assert result.is_error and "argument 'package_name'" in text_of(result), bad


async def test_a_saved_figure_comes_back_as_image_content(client: Client) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.savefig('plot.png')\nprint('ok')"
    result = await _call(client, "run_python_code", {"code": code})
    assert not result.is_error, text_of(result)
    images = [b for b in result.content if isinstance(b, types.ImageContent)]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    assert "plot.png" in text_of(result)


async def test_run_code_returns_structured_status_and_usage(client: Client) -> None:
    result = await _call(client, "run_code", {"code": "while True: pass", "timeout_s": 1})
    payload = result.structured_content
    assert result.is_error and payload is not None
    assert payload["status"] == "timeout"
    assert payload["usage"]["wall_ms"] >= 900
    ok = await _call(client, "run_code", {"code": "print('hi')"})
    assert ok.structured_content is not None
    assert ok.structured_content["status"] == "ok" and ok.structured_content["stdout"] == "hi\n"
    assert ok.structured_content["usage"]["peak_memory_bytes"] is not None


async def test_run_code_timeout_is_clamped_to_the_policy_ceiling(client: Client) -> None:
    result = await _call(client, "run_code", {"code": "print(1)", "timeout_s": 10_000})
    assert result.structured_content is not None and result.structured_content["status"] == "ok"


async def _as_connection(
    name: str, server: Any, calls: list[tuple[str, dict[str, Any]]]
) -> list[types.CallToolResult]:
    """Make `calls` in order from one client connection of its own (one session)."""
    with connection_scope(name):
        async with Client(server) as client:
            return [await _call(client, tool, args) for tool, args in calls]


async def test_sessions_do_not_share_workspaces(wasm_engine: WasmEngine, tmp_path: Path) -> None:
    save = ("save_to_file_and_run", {"file_name": "mine.py", "code": "v = 1"})
    run = ("run_python_file", {"file_name": "mine.py", "variable_to_return": "v"})
    async with service_for(tmp_path / "state", wasm_engine) as service:
        server = build_server(service)
        first = await _as_connection("first", server, [save, run])
        second = await _as_connection("second", server, [run])
    assert text_of(first[1]) == "1"
    assert second[0].is_error and "No such file" in text_of(second[0])


async def test_two_sessions_run_slow_calls_at_the_same_time(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    async with service_for(tmp_path / "state", wasm_engine) as service:
        server = build_server(service)
        slow = ("run_python_code", {"code": "import time; time.sleep(2); print('done')"})
        began = time.monotonic()
        results = await asyncio.gather(
            _as_connection("first", server, [slow]), _as_connection("second", server, [slow])
        )
        elapsed = time.monotonic() - began
    assert [text_of(r[0]).strip() for r in results] == ["done", "done"]
    assert elapsed < 3.5, f"two 2 s calls took {elapsed:.1f} s together"


async def test_code_over_the_policy_maximum_is_refused_naming_the_limit(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    policy = tmp_path / "small.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        "tools:\n  run_python_code:\n    quotas: {max_code_bytes: 64}\n"
    )
    async with (
        service_for(tmp_path / "state", wasm_engine, policy) as service,
        Client(build_server(service)) as client,
    ):
        small = await _call(client, "run_python_code", {"code": "print('fits')"})
        big = await _call(client, "run_python_code", {"code": "x = 1\n" * 20})
    assert text_of(small).strip() == "fits"
    assert big.is_error and "max_code_bytes" in text_of(big)


async def test_run_code_memory_is_lowered_by_the_caller_never_raised(client: Client) -> None:
    grow = "blocks = [bytearray(16 << 20) for _ in range(8)]\nprint('held 128 MiB')"
    capped = await _call(client, "run_code", {"code": grow, "memory_mb": 64})
    assert capped.structured_content is not None
    assert capped.structured_content["status"] == "memory"
    roomy = await _call(client, "run_code", {"code": grow, "memory_mb": 10_000_000})
    assert roomy.structured_content is not None and roomy.structured_content["status"] == "ok"
