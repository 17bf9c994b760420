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


async def test_globals_persist_as_the_engine_declares(bench: Bench, session: str) -> None:
    await bench.call("run_code", {"code": "kept = 5"}, session=session)
    later = await bench.call("run_code", {"code": "print(kept)"}, session=session)
    assert later.structured is not None
    if bench.engine.capabilities.persistent_state:
        assert later == _run({**RUN_OK, "stdout": "5\n"}, is_error=False)
    else:
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
