"""The final expression's value, as a REPL gives it, on every engine: the same cases on a wasm
guest prepared ahead and one started for the call, on Pyodide, on runc and on gVisor (runsc).

`Program.final_expression` asks for the `repr()` of the value of the code's trailing
expression statement: no value when it is `None`, raises, or the code ends in a statement,
for files, and when the flag is off; `variable_to_return` wins when it is set.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from sandboxes import (
    ExecutionPlan,
    Limits,
    Program,
    ProgramKind,
    RunResult,
    WorkspacePaths,
    session_key,
)
from tests.sandboxes.conftest import Target

pytestmark = pytest.mark.anyio


class Run(Protocol):
    async def __call__(
        self,
        source: str,
        *,
        final_expression: bool = True,
        variable: str | None = None,
        kind: ProgramKind = "code",
    ) -> RunResult: ...


@pytest.fixture
async def run(target: Target, workspace: WorkspacePaths) -> AsyncIterator[Run]:
    """Runs a program in this test's own session on the engine under test."""
    session = f"final-expression-{secrets.token_hex(4)}"

    async def run_program(
        source: str,
        *,
        final_expression: bool = True,
        variable: str | None = None,
        kind: ProgramKind = "code",
    ) -> RunResult:
        plan = ExecutionPlan(
            decision_id=f"final-expression-{secrets.token_hex(4)}",
            engine=target.kind,
            program=Program(kind, source, variable, final_expression=final_expression),
            limits=Limits(wall_timeout_s=30.0),
            workspace=workspace,
            session_id=session,
            runtime=target.runtime,
        )
        return await target.engine.run(plan)

    yield run_program
    await target.engine.end_session(session_key("local", session))


async def test_the_final_expression_comes_back_as_its_repr(run: Run) -> None:
    result = await run("x = 6\nx * 7")
    assert (result.status, result.exit_code, result.stdout) == ("ok", 0, "")
    assert (result.value, result.value_found) == ("42", True)


async def test_a_string_comes_back_quoted(run: Run) -> None:
    result = await run("'a'")
    assert (result.status, result.value, result.value_found) == ("ok", "'a'", True)


async def test_a_final_expression_of_none_gives_no_value(run: Run) -> None:
    result = await run("print(1)")
    assert (result.status, result.stdout) == ("ok", "1\n")
    assert (result.value, result.value_found) == (None, False)


async def test_code_ending_in_a_statement_gives_no_value(run: Run) -> None:
    result = await run("x = 6\ny = x * 7")
    assert (result.status, result.value, result.value_found) == ("ok", None, False)


async def test_a_final_expression_that_raises_is_an_error_on_its_own_line(run: Run) -> None:
    result = await run("x = 0\n1 / x")
    assert (result.status, result.exit_code) == ("error", 1)
    assert result.error == "ZeroDivisionError: division by zero"
    assert (result.value, result.value_found) == (None, False)
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    assert lines[0] == "Traceback (most recent call last):"
    assert [line for line in lines if line.startswith("File ")] == [
        'File "<code>", line 2, in <module>'  # the user's line, and no frame of the runner's
    ]
    assert (lines[2], lines[-1]) == ("1 / x", "ZeroDivisionError: division by zero")


async def test_an_error_in_the_body_stops_before_the_final_expression(run: Run) -> None:
    result = await run("print('before')\nraise KeyError('k')\nprint('after')\n42")
    assert (result.status, result.stdout, result.error) == ("error", "before\n", "KeyError: 'k'")
    assert 'File "<code>", line 2, in <module>' in result.stderr
    assert (result.value, result.value_found) == (None, False)


async def test_variable_to_return_wins_over_the_final_expression(run: Run) -> None:
    result = await run("answer = 'text'\n6 * 7", variable="answer")
    assert (result.status, result.value, result.value_found) == ("ok", "text", True)


async def test_without_the_flag_no_value_comes_back(run: Run) -> None:
    result = await run("x = 6\nx * 7", final_expression=False)
    assert (result.status, result.stdout) == ("ok", "")
    assert (result.value, result.value_found) == (None, False)


async def test_a_file_never_gives_a_final_expression(run: Run, workspace: WorkspacePaths) -> None:
    (workspace.files / "script.py").write_text("print('ran')\n6 * 7\n")
    result = await run("script.py", kind="file")
    assert (result.status, result.stdout) == ("ok", "ran\n")
    assert (result.value, result.value_found) == (None, False)


async def test_a_syntax_error_is_reported_as_without_the_flag(run: Run) -> None:
    with_flag = await run("x = (\n")
    without = await run("x = (\n", final_expression=False)
    assert (with_flag.status, with_flag.value) == ("error", None)
    assert with_flag.error is not None
    assert with_flag.error.splitlines()[-1].startswith("SyntaxError: ")
    assert (with_flag.error, with_flag.stderr) == (without.error, without.stderr)
