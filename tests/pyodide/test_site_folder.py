"""The installed packages at `/site`: filled by the host before each run, read-only to code."""

from __future__ import annotations

import pytest

from sandboxes import WorkspacePaths
from sandboxes.pyodide import PyodideEngine
from tests.guest_code import TRY_ALL_REFUSED

from .conftest import make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]


def _install_tinypkg(workspace: WorkspacePaths) -> None:
    package = workspace.site / "tinypkg"
    package.mkdir()
    (package / "__init__.py").write_text("def answer():\n    return 42\n")


async def test_code_cannot_change_installed_packages_and_still_imports_them(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    _install_tinypkg(workspace)
    code = f"""
import os
open('/workspace/w.py', 'w').write('x = 1')
attempts = {{
    'overwrite': lambda: open('/site/tinypkg/__init__.py', 'w').write('def answer(): 0'),
    'append': lambda: open('/site/tinypkg/__init__.py', 'a').write('x = 1'),
    'truncate': lambda: os.truncate('/site/tinypkg/__init__.py', 0),
    'create': lambda: open('/site/evil.py', 'w').write('x = 1'),
    'create in package': lambda: open('/site/tinypkg/evil.py', 'w').write('x = 1'),
    'mkdir': lambda: os.mkdir('/site/other'),
    'delete': lambda: os.remove('/site/tinypkg/__init__.py'),
    'chmod': lambda: os.chmod('/site/tinypkg/__init__.py', 0o666),
    'chmod folder': lambda: os.chmod('/site', 0o777),
    'utime': lambda: os.utime('/site/tinypkg/__init__.py', (1, 1)),
    'move in': lambda: os.rename('/workspace/w.py', '/site/w.py'),
    'move out': lambda: os.rename('/site/tinypkg', '/workspace/tinypkg'),
    'symlink': lambda: os.symlink('/workspace', '/site/link'),
    'move site': lambda: os.rename('/site', '/site2'),
}}
{TRY_ALL_REFUSED}
import tinypkg
allowed, tinypkg.answer(), sorted(os.listdir('/site')), sorted(os.listdir('/site/tinypkg'))
"""
    result = await engine.run(make_plan(workspace, code, session=session_id))
    assert (result.status, result.value) == (
        "ok",
        "([], 42, ['tinypkg'], ['__init__.py'])",
    ), result.stderr
    assert sorted(p.name for p in workspace.site.rglob("*")) == ["__init__.py", "tinypkg"]
    assert result.files_written == ("w.py",)


async def test_an_empty_site_folder_cannot_be_removed_or_replaced(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    code = f"""
import os
os.mkdir('/tmp/mine')
attempts = {{
    'rmdir': lambda: os.rmdir('/site'),
    'move away': lambda: os.rename('/site', '/site2'),
    'replace': lambda: os.rename('/tmp/mine', '/site'),
}}
{TRY_ALL_REFUSED}
allowed, os.path.isdir('/site'), os.access('/site', os.W_OK)
"""
    result = await engine.run(make_plan(workspace, code, session=session_id))
    assert (result.status, result.value) == ("ok", "([], True, False)"), result.stderr


async def test_packages_installed_or_removed_between_calls_show_on_the_next_call(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    first = await engine.run(make_plan(workspace, "import tinypkg", session=session_id))
    assert first.error == "ModuleNotFoundError: No module named 'tinypkg'"
    _install_tinypkg(workspace)
    second = await engine.run(
        make_plan(workspace, "import tinypkg\ntinypkg.answer()", session=session_id)
    )
    assert (second.status, second.value) == ("ok", "42"), second.stderr
    (workspace.site / "tinypkg" / "__init__.py").unlink()
    code = "import os\nos.path.exists('/site/tinypkg/__init__.py')"
    third = await engine.run(make_plan(workspace, code, session=session_id))
    assert (third.status, third.value) == ("ok", "False"), third.stderr
