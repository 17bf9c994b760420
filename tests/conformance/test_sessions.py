"""Session behaviour on every engine: a session's files persist between its calls and no
other session sees them; interpreter state persists exactly where the engine declares it
(`Capabilities.persistent_state`)."""

from __future__ import annotations

import pytest

from ._harness import RUN_OK, STRUCTURED_AS_JSON, Bench, Seen, exception_class, traceback_of

pytestmark = pytest.mark.anyio

READ_NOTE = "print(open('note.txt').read())"


def _run(structured: dict[str, object], *, is_error: bool) -> Seen:
    return Seen(is_error, (("text", STRUCTURED_AS_JSON),), structured)


async def test_files_persist_in_the_session_only(bench: Bench, session: str) -> None:
    other = bench.new_session("files-other")
    try:
        wrote = await bench.call(
            "run_code", {"code": "open('note.txt', 'w').write('kept')"}, session=session
        )
        again = await bench.call("run_code", {"code": READ_NOTE}, session=session)
        elsewhere = await bench.call("run_code", {"code": READ_NOTE}, session=other)
    finally:
        await bench.end_session(other)
    assert wrote == _run({**RUN_OK, "files_written": ["note.txt"]}, is_error=False)
    assert again == _run({**RUN_OK, "stdout": "kept\n"}, is_error=False)
    assert elsewhere.structured is not None
    found = elsewhere.structured
    assert exception_class(found["error"]) == "FileNotFoundError"
    assert found == {
        **RUN_OK,
        "status": "error",
        "stderr": traceback_of(found),
        "exit_code": 1,
        "error": found["error"],
    }


async def test_run_code_starts_fresh_by_default(bench: Bench, session: str) -> None:
    await bench.call("run_code", {"code": "kept = 5"}, session=session)
    later = await bench.call("run_code", {"code": "print(kept)"}, session=session)
    assert later.structured is not None
    assert later == _run(
        {
            **RUN_OK,
            "status": "error",
            "stderr": traceback_of(later.structured),
            "exit_code": 1,
            "error": "NameError: name 'kept' is not defined",
        },
        is_error=True,
    )


async def test_run_python_code_keeps_the_sessions_globals(bench: Bench, session: str) -> None:
    """Upstream's `run_python_code` keeps one namespace; here one per session, on every
    engine, and no other session sees it."""
    other = bench.new_session("globals-other")
    try:
        first = await bench.call(
            "run_python_code", {"code": "import json\nk = 41"}, session=session
        )
        asked = {"code": "y = json.loads(str(k)) + 1", "variable_to_return": "y"}
        later = await bench.call("run_python_code", asked, session=session)
        elsewhere = await bench.call("run_python_code", {"code": "print(k)"}, session=other)
    finally:
        await bench.end_session(other)
    assert first == Seen(False, (("text", "successfully ran python code"),), None)
    assert later == Seen(False, (("text", "42"),), None)
    assert elsewhere.is_error
    assert elsewhere.text.startswith("Error running python code: NameError")


async def test_a_limit_ends_the_sessions_interpreter_and_the_next_call_says_so(
    bench: Bench, session: str
) -> None:
    await bench.call("pyodide_execute", {"code": "k = 1"}, session=session)
    await bench.call(
        "pyodide_execute", {"code": "while True: pass", "timeout": 1000}, session=session
    )
    after = await bench.call("pyodide_execute", {"code": "k"}, session=session)
    assert after.is_error
    lines = after.text.splitlines()
    assert lines[0] == "Error: NameError: name 'k' is not defined"
    assert lines[1:3] == [
        "[stderr]",
        "sandgate: this session's interpreter was restarted (the previous run was stopped "
        "by wall time 1 s); its globals are gone",
    ]
