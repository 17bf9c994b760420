"""The suite's own premise, checked on every engine: the policy routes every tool to the
engine under test (a code-running tool's outcome names the engine that ran it), and every
tool of the registry has a case in this suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import TOOLS, Caller
from runner.tools import Ran

from ._harness import ENGINE_KEYS, GRANT, RUN_TIMEOUT_S, Bench

pytestmark = pytest.mark.anyio

CODE_CALLS = (
    ("run_python_code", {"code": "print(1)"}),
    ("save_to_file_and_run", {"file_name": "routed.py", "code": "print(1)"}),
    ("run_python_file", {"file_name": "routed.py"}),
    ("pyodide_execute", {"code": "1"}),
    ("run_code", {"code": "print(1)"}),
)


async def test_every_code_tool_runs_on_the_routed_engine(bench: Bench, session: str) -> None:
    caller = Caller(grant=GRANT, session=session)
    ran_on = {}
    for tool, args in CODE_CALLS:
        outcome = await bench.service.outcome(tool, args, caller)
        assert isinstance(outcome, Ran), (tool, outcome)
        assert outcome.result.status == "ok", (tool, outcome.result)
        ran_on[tool] = outcome.engine
    assert ran_on == dict.fromkeys(ran_on, ENGINE_KEYS[bench.profile])
    assert set(bench.service.tool_names()) == {spec.name for spec in TOOLS}


async def test_the_call_after_a_timeout_runs(bench: Bench, session: str) -> None:
    stopped = {"code": "while True: pass", "timeout_s": RUN_TIMEOUT_S}
    await bench.call("run_code", stopped, session=session)
    after = await bench.call("run_code", {"code": "print('after')"}, session=session)
    assert after.structured is not None
    assert (after.is_error, after.structured["status"], after.structured["stdout"]) == (
        False,
        "ok",
        "after\n",
    )
    notices = after.structured["stderr"].splitlines()
    if bench.engine.capabilities.persistent_state:  # it may say the session's globals are gone
        assert all(line.startswith("sandgate: ") for line in notices), notices
    else:
        assert notices == []


def test_every_tool_has_a_case() -> None:
    """A tool added to the registry is listed here until a case of the suite calls it."""
    here = Path(__file__)
    cases = "".join(p.read_text() for p in here.parent.glob("test_*.py") if p != here)
    assert [spec.name for spec in TOOLS if f'"{spec.name}"' not in cases] == []
