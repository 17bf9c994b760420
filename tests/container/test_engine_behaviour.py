"""The container engine on a real dockerd, runc and gVisor: what a run returns."""

from __future__ import annotations

import os
import stat
import textwrap
from dataclasses import replace

import pytest

from sandboxes import WorkspacePaths
from sandboxes.container import ContainerEngine
from tests.container.conftest import make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.container]

PNG_WRITER = textwrap.dedent(
    """
    import struct, zlib
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    png = (b"\\x89PNG\\r\\n\\x1a\\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\\x00\\xff\\x00\\x00"))
           + chunk(b"IEND", b""))
    import os
    os.makedirs("plots", exist_ok=True)
    with open("plots/dot.png", "wb") as f:
        f.write(png)
    """
)


async def test_output_exit_code_and_usage(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    result = await engine.run(make_plan(workspace, "print('hello'); print(2 + 3)"))
    assert (result.status, result.stdout, result.stderr, result.exit_code) == (
        "ok",
        "hello\n5\n",
        "",
        0,
    )
    assert result.limit is None and result.error is None and result.truncated == ()
    assert result.usage.wall_ms > 0
    assert result.usage.cpu_ms is not None and result.usage.cpu_ms >= 0
    assert result.usage.peak_memory_bytes is not None and result.usage.peak_memory_bytes > 0
    assert result.usage.output_bytes == len(b"hello\n5\n")


async def test_error_has_the_exception_line_and_a_clean_traceback(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    code = "def divide(a):\n    return a / 0\n\nprint('before')\ndivide(1)\n"
    result = await engine.run(make_plan(workspace, code))
    assert (result.status, result.exit_code, result.stdout) == ("error", 1, "before\n")
    assert result.error == "ZeroDivisionError: division by zero"
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert 'File "<code>", line 5, in <module>' in result.stderr
    assert "return a / 0" in result.stderr
    assert "server.py" not in result.stderr and "runpy" not in result.stderr
    assert "sandgate_program" not in result.stderr


async def test_the_program_sees_its_workspace_and_packages_on_its_path_not_the_server(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    code = "import sys; print(sys.path[:2]); print(any('sandgate' in p for p in sys.path))"
    result = await engine.run(make_plan(workspace, code))
    assert result.stdout == "['/workspace', '/site']\nFalse\n", result.stderr


async def test_stdin_reaches_the_program(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    plan = make_plan(workspace, "import sys; print(sys.stdin.read().upper())")
    plan = replace(plan, program=replace(plan.program, stdin=b"fed from the host\n"))
    result = await engine.run(plan)
    assert (result.status, result.stdout) == ("ok", "FED FROM THE HOST\n\n")


async def test_sys_exit_status_is_kept(engine: ContainerEngine, workspace: WorkspacePaths) -> None:
    result = await engine.run(make_plan(workspace, "import sys; sys.exit(3)"))
    assert (result.status, result.exit_code, result.error) == ("error", 3, None)


async def test_variable_to_return(engine: ContainerEngine, workspace: WorkspacePaths) -> None:
    found = await engine.run(make_plan(workspace, "answer = {'n': 6 * 7}", variable="answer"))
    assert (found.status, found.value, found.value_found) == ("ok", "{'n': 42}", True)
    missing = await engine.run(make_plan(workspace, "other = 1", variable="answer"))
    assert (missing.status, missing.value, missing.value_found) == ("ok", None, False)


async def test_workspace_files_persist_and_are_reported(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    (workspace.files / "given.txt").write_text("from the host\n")
    (workspace.files / "data").mkdir()
    (workspace.files / "data" / "old.csv").write_text("a,b\n")
    code = textwrap.dedent(
        """
        import os
        print(open("given.txt").read().strip(), os.getcwd())
        with open("given.txt", "a") as f:
            f.write("and the sandbox\\n")
        os.makedirs("out/deep", exist_ok=True)
        open("out/deep/result.txt", "w").write("42")
        """
    )
    first = await engine.run(make_plan(workspace, code))
    assert (first.status, first.stdout) == ("ok", "from the host /workspace\n"), first.stderr
    assert first.files_written == ("given.txt", "out/deep/result.txt")
    assert (workspace.files / "given.txt").read_text() == "from the host\nand the sandbox\n"
    assert (workspace.files / "out" / "deep" / "result.txt").read_text() == "42"
    assert (workspace.files / "data" / "old.csv").read_text() == "a,b\n"
    (workspace.files / "script.py").write_text("print(open('out/deep/result.txt').read())\n")
    second = await engine.run(make_plan(workspace, "script.py", kind="file"))
    assert (second.status, second.stdout, second.files_written) == ("ok", "42\n", ())


async def test_site_folder_is_importable_and_read_only(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    (workspace.site / "helper_mod.py").write_text("VALUE = 'from site'\n")
    code = textwrap.dedent(
        """
        import helper_mod
        print(helper_mod.VALUE)
        try:
            open("/site/new.py", "w")
        except OSError as exc:
            print("site read-only:", type(exc).__name__)
        """
    )
    result = await engine.run(make_plan(workspace, code))
    assert result.status == "ok", result.stderr
    assert result.stdout.splitlines()[0] == "from site"
    assert result.stdout.splitlines()[1].startswith("site read-only:")
    assert (workspace.site / "helper_mod.py").is_file()


async def test_images_written_by_the_code_come_back(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    result = await engine.run(make_plan(workspace, PNG_WRITER))
    assert result.status == "ok", result.stderr
    assert [(i.path, i.mime_type) for i in result.images] == [("plots/dot.png", "image/png")]
    assert result.images[0].data == (workspace.files / "plots" / "dot.png").read_bytes()
    assert result.images[0].data.startswith(b"\x89PNG")


async def test_links_out_of_the_workspace_are_not_followed_on_the_host(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    code = "import os\nos.symlink('/etc/hostname', 'leak.png')\nos.symlink('/', 'root')\n"
    result = await engine.run(make_plan(workspace, code))
    assert result.status == "ok", result.stderr
    assert result.images == () and result.files_written == ()
    assert stat.S_ISLNK(os.lstat(workspace.files / "leak.png").st_mode)


async def test_output_is_capped_while_streaming(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n"
    result = await engine.run(make_plan(workspace, code, output_bytes=10_000, wall_timeout_s=30))
    assert (result.status, result.truncated) == ("output_limit", ("stdout",))
    assert result.limit == "output 10000 bytes per stream"
    assert len(result.stdout) == 10_000 and set(result.stdout) == {"x"}
    assert result.usage.wall_ms < 20_000


async def test_runs_of_a_session_never_share_a_container(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    first, second = make_plan(workspace, "x = 1"), make_plan(workspace, "print(x)")
    assert (await engine.run(first)).status == "ok"
    result = await engine.run(second)
    assert result.error == "NameError: name 'x' is not defined"
    assert engine.container_for(first.decision_id) != engine.container_for(second.decision_id)
