"""Fuzz the installed `sandgate serve` over stdio with raw bytes: invalid JSON, invalid UTF-8,
huge lines, deep nesting, unknown methods, odd ids, out-of-order messages.

The process must stay alive, write only JSON-RPC messages, answer every well-formed request
(one with an id) with a result or an error, and still run a `tools/call` afterwards.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ._checks import INTERNAL_ERROR, assert_clean_text
from ._processes import RawStdio
from ._strategies import encode, raw_lines
from .conftest import fuzz_settings, write_fuzz_policy

pytestmark = [pytest.mark.wasm, pytest.mark.slow]

ANSWER_TIMEOUT_S = 60.0
"""Longest wait for a tools/call (runs are capped at 5 s, behind others on one worker)."""
SETTLED_TIMEOUT_S = 20.0
"""Longest wait for an answer once a later ping came back (only runs can still be going)."""
_unique = itertools.count(10**12)


def _start(folder: Path) -> RawStdio:
    return RawStdio(folder / "state", write_fuzz_policy(folder), folder / "stderr.log")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawStdio]:
    raw = _start(tmp_path_factory.mktemp("fuzz-stdio"))
    try:
        assert "result" in raw.initialize()
        yield raw
    finally:
        raw.close()


def request_id_of(message: Any) -> tuple[bool, Any]:
    """(True, id) when `message` is a request the server must answer: a JSON-RPC 2.0 object
    with a string method and a string or integer id."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return False, None
    if not isinstance(message.get("method"), str) or "id" not in message:
        return False, None
    rid = message["id"]
    if isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)):
        return True, rid
    return False, None


def _as_received(line: bytes) -> Any:
    """What the server parses from `line` (it reads UTF-8 with replacement characters)."""
    try:
        return json.loads(line.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None


def _unique_ids(line: bytes) -> tuple[bytes, Any]:
    """`line`, with a request's id made unique (same type), and that id; else (line, None)."""
    message = _as_received(line)
    expected, rid = request_id_of(message)
    if not expected:
        return line, None
    fresh = next(_unique)
    message["id"] = fresh if isinstance(rid, int) else f"u{fresh}"
    return encode(message), message["id"]


def _check_answer(answer: dict[str, Any]) -> None:
    assert answer.get("jsonrpc") == "2.0", answer
    assert ("result" in answer) != ("error" in answer), answer
    if "error" in answer:
        error = answer["error"]
        assert isinstance(error.get("code"), int) and isinstance(error.get("message"), str)
    assert_clean_text(json.dumps(answer))


def _check_alive_and_clean(server: RawStdio) -> None:
    assert server.alive, f"the server died: {server.stderr_tail()}"
    assert not server.not_json, f"the server wrote non-JSON-RPC lines: {server.not_json[:3]}"
    probe = server.request("ping", timeout_s=ANSWER_TIMEOUT_S)
    assert probe.get("result") == {}, probe


@fuzz_settings(scale=0.5)
@given(lines=st.lists(raw_lines(), min_size=1, max_size=5))
def test_raw_lines_never_break_the_server(server: RawStdio, lines: list[bytes]) -> None:
    awaited = []
    for line in lines:
        line, rid = _unique_ids(line)
        server.write(line + b"\n")
        if rid is not None:
            awaited.append(rid)
    _check_alive_and_clean(server)
    for rid in awaited:
        (answer,) = server.wait_for(rid, timeout_s=SETTLED_TIMEOUT_S)
        _check_answer(answer)


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","id":41,"method":"tools/call","params":"not an object"}',
        b'{"jsonrpc":"2.0","id":"s","method":"tools/call","params":[1,2]}',
        b'{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":5}}',
        b'{"jsonrpc":"2.0","id":43,"method":"tools/call"}',
        b'{"jsonrpc":"2.0","id":44,"method":7}',
        b'{"jsonrpc":"2.0","id":45,"method":"ping","params":3}',
        b'{"jsonrpc":"2.0","id":46,"method":"initialize","params":{}}',
        b'{"jsonrpc":"2.0","id":47,"method":"notifications/initialized"}',
        b'{"jsonrpc":"2.0","id":48,"method":"resources/read","params":{"uri":"file:///etc/x"}}',
        b'{"jsonrpc":"2.0","id":49,"method":"no/such/method"}',
    ],
)
def test_each_malformed_request_with_an_id_gets_an_answer(server: RawStdio, line: bytes) -> None:
    line, rid = _unique_ids(line)
    server.write(line + b"\n")
    if rid is not None:
        (answer,) = server.wait_for(rid, timeout_s=ANSWER_TIMEOUT_S)
        _check_answer(answer)
    _check_alive_and_clean(server)


def test_a_duplicate_id_in_flight_is_answered_and_the_server_goes_on(server: RawStdio) -> None:
    slow = {"name": "run_code", "arguments": {"code": "import time; time.sleep(0.5)"}}
    message = {"jsonrpc": "2.0", "id": "dup", "method": "tools/call", "params": slow}
    server.write(encode(message) + b"\n" + encode(message) + b"\n")
    answers = server.wait_for("dup", count=1, timeout_s=ANSWER_TIMEOUT_S)
    for answer in answers:
        _check_answer(answer)
    _check_alive_and_clean(server)


def test_huge_lines_are_answered(server: RawStdio) -> None:
    for size_code in ("x" * (3 * 1024 * 1024), "print(1)\n" * 100_000):
        rid = server.new_id()
        params = {"name": "run_code", "arguments": {"code": size_code}}
        server.send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})
        (answer,) = server.wait_for(rid, timeout_s=ANSWER_TIMEOUT_S)
        _check_answer(answer)
        assert answer["result"]["isError"] is True  # over max_code_bytes (or the request size)
    _check_alive_and_clean(server)


def test_requests_before_and_without_initialize_are_answered(
    tmp_path: Path,
) -> None:
    raw = _start(tmp_path)
    try:
        for method, params in (
            ("tools/list", None),
            ("tools/call", {"name": "run_code", "arguments": {"code": "print(1)"}}),
            ("ping", None),
        ):
            answer = raw.request(method, params, timeout_s=120.0)
            _check_answer(answer)
        raw.write(b"garbage before the handshake\n\xff\xfe\n")
        assert "result" in raw.initialize()
        listed = raw.request("tools/list", timeout_s=ANSWER_TIMEOUT_S)
        assert any(t["name"] == "run_code" for t in listed["result"]["tools"])
        _check_alive_and_clean(raw)
    finally:
        raw.close()
    assert raw.process.returncode == 0, raw.stderr_tail()


def test_the_server_still_runs_code_and_logged_no_internal_error(server: RawStdio) -> None:
    answer = server.request(
        "tools/call",
        {"name": "run_python_code", "arguments": {"code": "print(6 * 7)"}},
        timeout_s=ANSWER_TIMEOUT_S,
    )
    _check_answer(answer)
    assert answer["result"]["content"][0]["text"].strip() == "42"
    _check_alive_and_clean(server)
    log = server.stderr_tail(size=10**9)
    assert INTERNAL_ERROR not in log and "internal error serving" not in log, log[-3000:]
