"""The Python Code Runner tools (`run_python_code`, `save_to_file_and_run`, `run_python_file`,
`pip_install_package`) answer the same on every engine the policy routes them to."""

from __future__ import annotations

import pytest

from ._harness import PACKAGE, PACKAGE_VERSION, TIMEOUT_S, Bench, stop_notice, text_seen

pytestmark = pytest.mark.anyio


async def test_run_python_code_returns_what_it_printed(bench: Bench, session: str) -> None:
    answer = await bench.call("run_python_code", {"code": "print('hello')"}, session=session)
    assert answer == text_seen("hello\n")


async def test_run_python_code_returns_the_variable(bench: Bench, session: str) -> None:
    asked = {"code": "x = 6 * 7\nprint('not this')", "variable_to_return": "x"}
    assert await bench.call("run_python_code", asked, session=session) == text_seen("42")


async def test_run_python_code_names_a_missing_variable(bench: Bench, session: str) -> None:
    asked = {"code": "y = 1", "variable_to_return": "x"}
    assert await bench.call("run_python_code", asked, session=session) == text_seen(
        "Variable x not found"
    )


async def test_run_python_code_error_names_the_exception(bench: Bench, session: str) -> None:
    code = "def fail():\n    raise ValueError('boom')\nfail()"
    answer = await bench.call("run_python_code", {"code": code}, session=session)
    assert (answer.is_error, len(answer.blocks), answer.structured) == (True, 1, None)
    lines = answer.text.rstrip("\n").split("\n")
    assert lines[0] == "Error running python code: ValueError: boom"
    assert lines[1] == "Traceback (most recent call last):"
    assert "    raise ValueError('boom')" in lines  # the traceback, its error line said once
    assert answer.text.count("ValueError: boom") == 1


async def test_run_python_code_timeout(bench: Bench, session: str) -> None:
    answer = await bench.call("run_python_code", {"code": "while True: pass"}, session=session)
    limit = f"wall time {TIMEOUT_S} s"
    head = (
        f"Error: the code was stopped by the time limit ({limit}).\n"
        "--- output before it stopped ---\n[stderr]\n"
    )
    assert (answer.is_error, len(answer.blocks), answer.structured) == (True, 1, None)
    assert answer.text.startswith(head), answer.text
    stop_notice(answer.text.removeprefix(head), limit)


async def test_save_to_file_and_run_then_run_python_file(bench: Bench, session: str) -> None:
    saved = await bench.call(
        "save_to_file_and_run", {"file_name": "conf.py", "code": "print('saved')"}, session=session
    )
    kept = await bench.call(
        "save_to_file_and_run",
        {"file_name": "conf.py", "code": "print('replaced')", "overwrite": False},
        session=session,
    )
    ran = await bench.call("run_python_file", {"file_name": "conf.py"}, session=session)
    assert saved == text_seen("successfully ran conf.py\nsaved\n")
    assert kept == text_seen("File conf.py already exists")
    assert ran == text_seen("successfully ran conf.py\nsaved\n")


async def test_run_python_file_returns_the_variable(bench: Bench, session: str) -> None:
    saved = await bench.call(
        "save_to_file_and_run",
        {"file_name": "value.py", "code": "answer = 'forty-two'", "variable_to_return": "answer"},
        session=session,
    )
    ran = await bench.call(
        "run_python_file",
        {"file_name": "value.py", "variable_to_return": "answer"},
        session=session,
    )
    assert saved == ran == text_seen("forty-two")


async def test_pip_install_package_from_the_mirror(bench: Bench, session: str) -> None:
    installed = await bench.call("pip_install_package", {"package_name": PACKAGE}, session=session)
    imported = await bench.call(
        "run_python_code", {"code": f"import {PACKAGE}; print({PACKAGE}.VERSION)"}, session=session
    )
    assert installed == text_seen(
        f"successfully installed package {PACKAGE} ({PACKAGE}=={PACKAGE_VERSION}, from the "
        "local mirror, hashes verified)"
    )
    assert imported == text_seen(f"{PACKAGE_VERSION}\n")


async def test_pip_install_package_refuses_a_package_off_the_allow_list(
    bench: Bench, session: str
) -> None:
    answer = await bench.call("pip_install_package", {"package_name": "six"}, session=session)
    allow_list = bench.service.engine_kind("pip_install_package")  # one allow-list per kind
    assert answer == text_seen(
        "Error installing package six: package_name 'six' refused: it is not on the operator's "
        f"allow-list for {allow_list}; ask the operator to add it to the allow-list and run "
        "`sandgate mirror sync`",
        is_error=True,
    )
