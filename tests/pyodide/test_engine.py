"""The pyodide engine on a real Deno: values, output, errors, files, images and sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxes import Limits, WorkspacePaths, session_key, workspace_limit
from sandboxes.pyodide import PyodideEngine

from .conftest import make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


async def test_output_and_the_final_expression_come_back(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    result = await engine.run(make_plan(workspace, "print('hi')\n6 * 7", session=session_id))
    assert (result.status, result.stdout, result.exit_code) == ("ok", "hi\n", 0)
    assert (result.value, result.value_found, result.error) == ("42", True, None)
    assert result.usage.wall_ms > 0 and result.usage.cpu_ms is not None


async def test_a_final_none_or_statement_gives_no_value(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    for code in ("x = 1", "None", "print('only output')"):
        result = await engine.run(make_plan(workspace, code, session=session_id))
        assert (result.status, result.value, result.value_found) == ("ok", None, False)


async def test_variable_to_return_gives_its_str(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    plan = make_plan(workspace, "c = 'text'\n5", session=session_id, variable="c")
    result = await engine.run(plan)
    assert (result.status, result.value, result.value_found) == ("ok", "text", True)


async def test_an_exception_is_data_with_its_traceback(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    code = "def f():\n    return 1 / 0\nprint('before')\nf()"
    result = await engine.run(make_plan(workspace, code, session=session_id))
    assert (result.status, result.exit_code, result.stdout) == ("error", 1, "before\n")
    assert result.error == "ZeroDivisionError: division by zero"
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert 'File "<code>", line 2, in f' in result.stderr and "return 1 / 0" in result.stderr
    assert "<sandgate>" not in result.stderr and result.value is None


async def test_a_syntax_error_and_sys_exit_are_reported(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    bad = await engine.run(make_plan(workspace, "def (", session=session_id))
    assert bad.status == "error" and bad.error is not None
    assert bad.error.startswith("SyntaxError")
    quit_ = await engine.run(make_plan(workspace, "import sys; sys.exit(3)", session=session_id))
    assert (quit_.status, quit_.exit_code) == ("error", 3)
    clean = await engine.run(make_plan(workspace, "raise SystemExit(0)", session=session_id))
    assert (clean.status, clean.exit_code) == ("ok", 0)


async def test_top_level_await_and_stdin(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    code = "import asyncio\nawait asyncio.sleep(0.01)\nname = input()\nf'hello {name}'"
    plan = make_plan(workspace, code, session=session_id, stdin=b"pyodide\n")
    result = await engine.run(plan)
    assert (result.status, result.value) == ("ok", "'hello pyodide'")


async def test_globals_stay_within_one_session_only(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    first = await engine.run(make_plan(workspace, "counter = 1", session=session_id))
    again = await engine.run(make_plan(workspace, "counter += 1\ncounter", session=session_id))
    assert (first.status, again.status, again.value) == ("ok", "ok", "2")
    elsewhere = await engine.run(make_plan(workspace, "counter", session=session_id + "-other"))
    assert elsewhere.error == "NameError: name 'counter' is not defined"
    mine, other = session_key("local", session_id), session_key("local", session_id + "-other")
    assert engine.session_pid(mine) != engine.session_pid(other)
    assert await engine.end_session(mine)
    assert await engine.end_session(other)
    assert not await engine.end_session(mine)
    fresh = await engine.run(make_plan(workspace, "'counter' in globals()", session=session_id))
    assert fresh.value == "False"
    await engine.end_session(mine)


async def test_output_past_the_cap_is_cut_and_reported(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    limits = Limits(wall_timeout_s=15.0, output_bytes=1000)
    code = "for i in range(5000):\n    print('x' * 50)\n'done'"
    result = await engine.run(make_plan(workspace, code, session=session_id, limits=limits))
    assert (result.status, result.truncated) == ("output_limit", ("stdout",))
    assert len(result.stdout.encode()) <= 1000 and result.stdout.startswith("x" * 50)
    assert result.limit == "output 1000 bytes per stream"
    after = await engine.run(make_plan(workspace, "'i' in globals()", session=session_id))
    assert (after.value, after.state) == ("False", "lost")
    assert after.state_note == "the previous run was stopped by output 1000 bytes per stream"


async def test_files_go_in_and_come_back_with_images(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    (workspace.files / "data").mkdir()
    (workspace.files / "data" / "in.txt").write_text("from the host")
    code = (
        "text = open('data/in.txt').read()\n"
        "open('out.txt', 'w').write(text.upper())\n"
        f"open('plot.png', 'wb').write({PNG!r})\n"
        "text"
    )
    result = await engine.run(make_plan(workspace, code, session=session_id))
    assert (result.status, result.value) == ("ok", "'from the host'")
    assert result.files_written == ("out.txt", "plot.png")
    assert (workspace.files / "out.txt").read_text() == "FROM THE HOST"
    assert [(i.path, i.mime_type, i.data) for i in result.images] == [
        ("plot.png", "image/png", PNG)
    ]
    (workspace.files / "data" / "in.txt").write_text("changed on the host")
    removed = await engine.run(
        make_plan(
            workspace,
            "import os\nos.remove('out.txt')\nopen('data/in.txt').read()",
            session=session_id,
        )
    )
    assert removed.value == "'changed on the host'"
    assert not (workspace.files / "out.txt").exists()


async def test_a_workspace_file_runs_as_a_program(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    (workspace.files / "job.py").write_text("import sys\nanswer = len(sys.argv[0])\nprint('ran')")
    plan = make_plan(workspace, "job.py", session=session_id, kind="file", variable="answer")
    result = await engine.run(plan)
    assert (result.status, result.stdout, result.value) == ("ok", "ran\n", "6")


async def test_a_guest_symlink_never_reaches_the_host(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host only")
    code = f"import os\nos.symlink({str(outside)!r}, 'link.txt')\nos.path.islink('link.txt')"
    result = await engine.run(make_plan(workspace, code, session=session_id))
    assert (result.status, result.value) == ("ok", "True")
    assert not (workspace.files / "link.txt").exists()
    assert outside.read_text() == "host only"


async def test_packages_in_the_site_folder_are_importable(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    first = await engine.run(make_plan(workspace, "import tinypkg", session=session_id))
    assert first.error == "ModuleNotFoundError: No module named 'tinypkg'"
    (workspace.site / "tinypkg").mkdir()
    (workspace.site / "tinypkg" / "__init__.py").write_text("def answer():\n    return 42\n")
    result = await engine.run(
        make_plan(workspace, "import tinypkg\ntinypkg.answer()", session=session_id)
    )
    assert (result.status, result.value) == ("ok", "42")
    assert not (workspace.files / "tinypkg").exists()


async def test_files_past_the_workspace_budget_are_not_saved(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    limits = Limits(wall_timeout_s=15.0, workspace_bytes=100_000)
    code = "open('a.bin', 'wb').write(b'a' * 60_000)\nopen('b.bin', 'wb').write(b'b' * 60_000)"
    result = await engine.run(make_plan(workspace, code, session=session_id, limits=limits))
    assert (result.status, result.limit) == ("killed", workspace_limit(limits))
    assert result.files_written == ("a.bin",)
    assert sum(p.stat().st_size for p in workspace.files.iterdir()) <= 100_000
