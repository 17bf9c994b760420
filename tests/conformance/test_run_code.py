"""`run_code`'s structured content is the same on every engine: status, output, exit code,
error, limit, truncation, images and files written (usage figures aside)."""

from __future__ import annotations

import secrets

import pytest

from ._harness import (
    GRANT,
    MEMORY_MB,
    OUTPUT_BYTES,
    RUN_OK,
    RUN_TIMEOUT_S,
    STRUCTURED_AS_JSON,
    Bench,
    Seen,
    stop_notice,
)

pytestmark = pytest.mark.anyio

MEMORY_HOG = "hog = []\nwhile True:\n    hog.append(bytearray(16 << 20))\n"
PRINT_FLOOD = "while True:\n    print('x' * 1000)\n"


def _run(structured: dict[str, object], *, is_error: bool) -> Seen:
    return Seen(is_error, (("text", STRUCTURED_AS_JSON),), structured)


async def test_run_code_ok(bench: Bench, session: str) -> None:
    answer = await bench.call("run_code", {"code": "print('hi')"}, session=session)
    assert answer == _run({**RUN_OK, "stdout": "hi\n"}, is_error=False)


async def test_run_code_error(bench: Bench, session: str) -> None:
    answer = await bench.call("run_code", {"code": "raise ValueError('boom')"}, session=session)
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "<code>", line 1, in <module>\n'
        "    raise ValueError('boom')\n"
        "ValueError: boom\n"
    )
    expected = {**RUN_OK, "status": "error", "stderr": traceback, "exit_code": 1}
    assert answer == _run({**expected, "error": "ValueError: boom"}, is_error=True)


async def test_run_code_timeout(bench: Bench, session: str) -> None:
    asked = {"code": "while True: pass", "timeout_s": RUN_TIMEOUT_S}
    answer = await bench.call("run_code", asked, session=session)
    assert answer.structured is not None
    limit = f"wall time {RUN_TIMEOUT_S} s"
    stop_notice(answer.structured["stderr"], limit)
    stopped = {**RUN_OK, "status": "timeout", "exit_code": None, "limit": limit}
    assert answer == _run({**stopped, "stderr": answer.structured["stderr"]}, is_error=True)


async def test_run_code_memory(bench: Bench, session: str) -> None:
    answer = await bench.call("run_code", {"code": MEMORY_HOG}, session=session)
    assert answer.structured is not None
    found = dict(answer.structured)
    limit = f"memory {MEMORY_MB << 20} bytes"
    stop_notice(found["stderr"], limit)
    assert found == {
        **RUN_OK,
        "status": "memory",
        "stderr": found["stderr"],  # a traceback where Python raised, then the stop line
        "error": "MemoryError: the sandbox ran out of memory",
        "exit_code": None,
        "limit": limit,
    }
    assert (answer.is_error, answer.blocks) == (True, (("text", STRUCTURED_AS_JSON),))


async def test_run_code_output_flood(bench: Bench, session: str) -> None:
    asked = {"code": PRINT_FLOOD, "timeout_s": RUN_TIMEOUT_S}  # past the cap, then the deadline
    answer = await bench.call("run_code", asked, session=session)
    assert answer.structured is not None
    limit = f"output {OUTPUT_BYTES} bytes per stream"
    stop_notice(answer.structured["stderr"], limit)
    flood = (("x" * 1000 + "\n") * (OUTPUT_BYTES // 1000))[:OUTPUT_BYTES]
    stopped = {
        **RUN_OK,
        "status": "output_limit",
        "stdout": flood,
        "stderr": answer.structured["stderr"],
        "exit_code": None,
        "limit": limit,
        "truncated": ["stdout"],
    }
    assert answer == _run(stopped, is_error=True)


async def test_run_code_files_argument(bench: Bench, session: str) -> None:
    asked = {
        "code": "print(open('data/in.txt').read())\nopen('data/out.txt', 'w').write('made')",
        "files": {"data/in.txt": "given"},
    }
    answer = await bench.call("run_code", asked, session=session)
    expected = {**RUN_OK, "stdout": "given\n", "files_written": ["data/out.txt"]}
    assert answer == _run(expected, is_error=False)


async def test_run_code_stdin(bench: Bench, session: str) -> None:
    asked = {"code": "import sys\nprint(sys.stdin.read().upper())", "stdin": "abc\ndef"}
    answer = await bench.call("run_code", asked, session=session)
    assert answer == _run({**RUN_OK, "stdout": "ABC\nDEF\n"}, is_error=False)


async def test_run_code_named_session(bench: Bench, session: str) -> None:
    name = f"named-{secrets.token_hex(4)}"
    other = bench.new_session("named-other")
    try:
        wrote = await bench.call(
            "run_code", {"code": "open('n.txt', 'w').write('n')", "session": name}, session=session
        )
        read = await bench.call(
            "run_code", {"code": "print(open('n.txt').read())", "session": name}, session=other
        )
    finally:
        await bench.service.end_named_session(GRANT, name)
    assert wrote == _run({**RUN_OK, "files_written": ["n.txt"]}, is_error=False)
    assert read == _run({**RUN_OK, "stdout": "n\n"}, is_error=False)
