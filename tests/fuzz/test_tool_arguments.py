"""Fuzz every tool's arguments: through the SDK's in-memory MCP client, and straight into
`Service.call_tool` (which also takes what no wire can carry: lone surrogates, deep nesting).

Each example must end, within a bound, in a tool result (an error result or a normal one) that
shows none of the server's internals and is no internal error; the server logs no error; and
it still serves a normal call afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pydantic_core
import pytest
from hypothesis import given, reject
from hypothesis import strategies as st
from mcp import Client
from mcp.shared.exceptions import MCPError

from runner import Caller, Config, Service, build_server, open_service
from runner.tools._format import RUN_CODE_STATUSES
from sandboxes import FakeEngine, WasmEngine
from tests.results import text_of

from ._checks import assert_clean_result, assert_clean_text
from ._strategies import small_text, tool_calls
from .conftest import fuzz_settings, write_fuzz_policy

pytestmark = pytest.mark.anyio

PER_CALL_S = 30.0
"""Longest any one call may take (the fuzz policy stops runs after 5 s)."""
STATUSES = set(RUN_CODE_STATUSES)


class ErrorLog(logging.Handler):
    """Keeps the error records of the `sandgate` loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logger = logging.getLogger("sandgate")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@dataclass
class Stack:
    service: Service
    client: Client
    errors: ErrorLog

    def no_new_errors(self, before: int) -> None:
        new = self.errors.records[before:]
        assert not new, f"the server logged errors: {[r.getMessage() for r in new]}"


@pytest.fixture(scope="module")
async def fake_stack(
    tmp_path_factory: pytest.TempPathFactory, errors: ErrorLog, anyio_backend: str
) -> AsyncIterator[Stack]:
    """A server on fake engines: the gate, audit, counters and workspaces are real."""
    folder = tmp_path_factory.mktemp("fuzz-arguments")
    engine = FakeEngine()
    config = Config(policy_path=write_fuzz_policy(folder), state_dir=folder / "state")
    async with (
        open_service(config, engines={"wasm": engine, "pyodide": engine}) as service,
        Client(build_server(service)) as client,
    ):
        yield Stack(service, client, errors)


@pytest.fixture(scope="module")
async def wasm_stack(
    tmp_path_factory: pytest.TempPathFactory,
    errors: ErrorLog,
    wasm_engine: WasmEngine,
    anyio_backend: str,
) -> AsyncIterator[Stack]:
    """A server on the real wasm engine."""
    folder = tmp_path_factory.mktemp("fuzz-code")
    config = Config(policy_path=write_fuzz_policy(folder), state_dir=folder / "state")
    async with (
        open_service(config, engines={"wasm": wasm_engine, "pyodide": wasm_engine}) as service,
        Client(build_server(service)) as client,
    ):
        yield Stack(service, client, errors)


def _sendable(arguments: Any) -> None:
    """Reject examples the client itself cannot encode (it would fail before sending)."""
    try:
        pydantic_core.to_json(arguments)
    except (ValueError, pydantic_core.PydanticSerializationError):
        reject()


def _check_structured(result: types.CallToolResult) -> None:
    if result.structured_content is not None and "status" in result.structured_content:
        assert result.structured_content["status"] in STATUSES


@fuzz_settings()
@given(call=tool_calls(wire=True))
async def test_any_tool_call_over_mcp_gets_a_clean_tool_result(
    fake_stack: Stack, call: tuple[str, Any]
) -> None:
    name, arguments = call
    _sendable(arguments)
    before = len(fake_stack.errors.records)
    with anyio.fail_after(PER_CALL_S):
        result = await fake_stack.client.call_tool(name, arguments)
    assert_clean_result(result)
    _check_structured(result)
    fake_stack.no_new_errors(before)


latin1_text = st.text(st.characters(max_codepoint=255), max_size=40)
callers = st.builds(
    Caller,
    grant=st.one_of(st.just("local"), small_text),
    session=st.one_of(st.just("local"), latin1_text),  # as an Mcp-Session-Id header decodes
)
"""Callers as the transports make them (grants from the policy, sessions from the wire)."""


@fuzz_settings()
@given(call=tool_calls(wire=False), caller=callers)
async def test_any_tool_call_in_process_gets_a_clean_tool_result(
    fake_stack: Stack, call: tuple[str, Any], caller: Caller
) -> None:
    name, arguments = call
    before = len(fake_stack.errors.records)
    with anyio.fail_after(PER_CALL_S):
        result = await fake_stack.service.call_tool(name, arguments, caller)
    assert_clean_result(result)
    fake_stack.no_new_errors(before)


resource_uris = st.one_of(
    st.builds(
        lambda parts: "file:///workspace/" + "/".join(parts),
        st.lists(
            st.one_of(
                small_text,
                st.sampled_from(["..", ".", "%00", "%2e%2e", "a.txt", "%ff", "a" * 300, "%2F"]),
            ),
            max_size=6,
        ),
    ),
    st.builds(lambda name, rest: f"file:///mounts/{name}/{rest}", small_text, small_text),
    small_text,
    st.sampled_from(["file:///workspace/%00", "file:", "file://", "file:///", "data:,x", ""]),
)


RESOURCE_NOT_FOUND = -32002


@fuzz_settings()
@given(uri=resource_uris)
async def test_any_resource_uri_gets_contents_or_an_invalid_params_error(
    fake_stack: Stack, uri: str
) -> None:
    """Contents, or a clean error: invalid params, or "resource not found" (-32002, as the
    MCP specification names it) for a file that is not there."""
    before = len(fake_stack.errors.records)
    await fake_stack.client.call_tool("run_code", {"code": "1", "files": {"a.txt": "hello"}})
    try:
        with anyio.fail_after(PER_CALL_S):
            result = await fake_stack.client.read_resource(uri)
    except MCPError as exc:
        assert exc.error.code in (types.INVALID_PARAMS, RESOURCE_NOT_FOUND), exc.error
        assert_clean_text(exc.error.message)
    else:
        assert isinstance(result, types.ReadResourceResult)
    fake_stack.no_new_errors(before)


python_fragments = st.sampled_from(
    [
        "print(1)",
        "1/0",
        "import sys; sys.exit(3)",
        "raise SystemExit('bye')",
        "import os; os._exit(0)",
        "print('é' * 10)",
        "import sys; sys.stdout.buffer.write(b'\\xff\\xfe')",
        "print('\\ud800')",
        "x = [0] * 10",
        "def f(): return f()\nf()",
        "import json; json.loads('{')",
        "open('/etc/passwd').read()",
        "open('out.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + bytes(40))",
        "import time; time.sleep(0.01)",
        "input()",
        "",
    ]
)
code_text = st.one_of(
    python_fragments,
    st.lists(python_fragments, min_size=1, max_size=4).map("\n".join),
    small_text,
)
code_calls = st.one_of(
    st.builds(lambda c: ("run_python_code", {"code": c}), code_text),
    st.builds(
        lambda c, v: ("run_python_code", {"code": c, "variable_to_return": v}),
        code_text,
        st.sampled_from(["x", "missing", ""]),
    ),
    st.builds(
        lambda c, s: ("run_code", {"code": c, "stdin": s, "timeout_s": 5}), code_text, small_text
    ),
    st.builds(
        lambda c, f: ("save_to_file_and_run", {"file_name": f, "code": c}),
        code_text,
        st.sampled_from(["a.py", "d/b.py", "c.py"]),
    ),
)


@pytest.mark.wasm
@fuzz_settings(scale=0.5)
@given(call=code_calls)
async def test_any_code_in_the_real_sandbox_gets_a_clean_tool_result(
    wasm_stack: Stack, call: tuple[str, dict[str, Any]]
) -> None:
    name, arguments = call
    before = len(wasm_stack.errors.records)
    with anyio.fail_after(PER_CALL_S):
        result = await wasm_stack.client.call_tool(name, arguments)
    assert_clean_result(result)
    _check_structured(result)
    wasm_stack.no_new_errors(before)


async def test_the_fuzzed_servers_still_serve(fake_stack: Stack, wasm_stack: Stack) -> None:
    for stack in (fake_stack, wasm_stack):
        with anyio.fail_after(PER_CALL_S):
            result = await stack.client.call_tool("run_code", {"code": "print(6 * 7)"})
        assert isinstance(result, types.CallToolResult) and not result.is_error, text_of(result)
    with anyio.fail_after(PER_CALL_S):
        real = await wasm_stack.client.call_tool("run_python_code", {"code": "print(6 * 7)"})
    assert text_of(real).strip() == "42"


async def test_the_fuzzed_workspaces_stay_inside_the_state_folder(fake_stack: Stack) -> None:
    root = fake_stack.service.sessions._root
    for session in fake_stack.service.sessions._sessions.values():
        assert Path(session.workspace.files).resolve().is_relative_to(root.resolve())
