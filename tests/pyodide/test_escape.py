"""Escape attempts through the JS bridge, the file system, the environment and the network.

Every check is made on the host: the planted secret and the planted file's content must not
appear in anything the guest returns, and the host listener must see no connection.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxes import RunResult, WorkspacePaths
from sandboxes.pyodide import PyodideEngine

from .conftest import make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]

GLOBAL_THIS = (
    "import pyodide.webloop as w\ng = w.scheduleCallback.constructor('return globalThis')()\n"
)
"""A path from Python to the JS global object that the import gate does not close."""


@pytest.fixture
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host file outside every workspace, with unguessable content."""
    path = tmp_path_factory.mktemp("host") / "private.txt"
    path.write_text("planted-" + secrets.token_hex(12))
    return path


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on the host's loopback that no guest may reach."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def _everything(result: RunResult) -> str:
    return "\n".join(
        [result.stdout, result.stderr, result.value or "", result.error or "", result.limit or ""]
    )


def _no_connection(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = sock.accept()
        conn.close()


@pytest.mark.parametrize(
    "code",
    [
        "import js",
        "from js import Deno",
        "import pyodide_js\npyodide_js.FS",
        "from pyodide.ffi import create_proxy",
        "import pyodide.ffi",
        "import _pyodide_core",
        "from pyodide.code import run_js",
        "import pyodide\npyodide.ffi",
    ],
)
async def test_the_bridge_modules_are_refused(
    engine: PyodideEngine, workspace: WorkspacePaths, shared_session: str, code: str
) -> None:
    result = await engine.run(make_plan(workspace, code, session=shared_session))
    assert result.status == "error"
    assert result.error is not None
    assert result.error.split(":")[0] in ("ModuleNotFoundError", "AttributeError")


async def test_the_guest_environment_is_its_own(
    engine: PyodideEngine, workspace: WorkspacePaths, shared_session: str, secret: str
) -> None:
    result = await engine.run(
        make_plan(workspace, "import os\ndict(os.environ)", session=shared_session)
    )
    assert result.status == "ok" and result.value is not None
    assert secret not in result.value and "sandboxes" not in result.value
    assert "'HOME': '/home/pyodide'" in result.value


async def test_the_js_global_object_holds_nothing_of_the_host(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str, secret: str
) -> None:
    code = GLOBAL_THIS + (
        "names = ['Deno', 'process', 'require', 'fetch', 'WebSocket', 'Worker', 'prompt',"
        " 'Buffer', 'navigator']\n"
        "[n for n in names if hasattr(g, n)]"
    )
    result = await engine.run(make_plan(workspace, code, session=session_id))
    assert (result.status, result.value) == ("ok", "[]")
    assert secret not in _everything(result)


@pytest.mark.parametrize(
    "attempt",
    [
        "open(PATH).read()",
        "import os\nos.listdir(os.path.dirname(PATH))",
        GLOBAL_THIS + "fs = await g.eval('import(\"node:fs\")')\nfs.readFileSync(PATH, 'utf8')",
        GLOBAL_THIS + "p = await g.eval('import(\"node:process\")')\np.env.SECRET",
        GLOBAL_THIS + "p = await g.eval('import(\"node:process\")')\np.env.to_py()",
        GLOBAL_THIS + "cp = await g.eval('import(\"node:child_process\")')\n"
        "cp.execSync('cat ' + PATH)",
        "import os\ndict(os.environ)",
    ],
)
async def test_host_files_and_environment_stay_out_of_reach(
    engine: PyodideEngine,
    workspace: WorkspacePaths,
    shared_session: str,
    secret: str,
    planted: Path,
    attempt: str,
) -> None:
    code = f"PATH = {str(planted)!r}\nSECRET = 'SANDGATE_TEST_SECRET'\n" + attempt
    result = await engine.run(make_plan(workspace, code, session=shared_session))
    seen = _everything(result)
    assert planted.read_text() not in seen and secret not in seen
    assert result.status in ("ok", "error", "killed")
    if "environ" not in attempt:
        assert result.status != "ok"


@pytest.mark.parametrize(
    "attempt",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=2)",
        "import urllib.request\nurllib.request.urlopen(f'http://127.0.0.1:{PORT}/', timeout=2)",
        GLOBAL_THIS + "await g.eval(f'fetch(\"http://127.0.0.1:{PORT}/\")')",
        GLOBAL_THIS + "n = await g.eval('import(\"node:net\")')\n"
        "s = n.connect(PORT, '127.0.0.1')\nimport asyncio\nawait asyncio.sleep(0.3)",
    ],
)
async def test_the_network_is_unreachable(
    engine: PyodideEngine,
    workspace: WorkspacePaths,
    session_id: str,
    listener: socket.socket,
    attempt: str,
) -> None:
    port = listener.getsockname()[1]
    result = await engine.run(
        make_plan(workspace, f"PORT = {port}\n" + attempt, session=session_id)
    )
    assert result.status in ("error", "killed")
    _no_connection(listener)


@pytest.mark.parametrize(
    ("attempt", "denied"),
    [
        ("g.Deno.readTextFileSync(PATH)", "read access"),
        ("g.Deno.readTextFileSync('/proc/self/environ')", "read access"),
        ("g.Deno.env.get('SANDGATE_TEST_SECRET')", "env access"),
        ("g.Deno.env.toObject()", "env access"),
        ("g.Deno.writeTextFileSync(PATH + '.new', 'x')", "write access"),
        ("g.Deno.Command.new('cat', g.JSON.parse('{}')).outputSync()", "run access"),
        ("await g.Deno.connect(g.JSON.parse(f'{{\"port\": {PORT}}}'))", "net access"),
        ("g.Deno.dlopen('libc.so.6', g.JSON.parse('{}'))", "ffi access"),
        ("g.Deno.hostname()", "sys access"),
    ],
)
async def test_deno_permissions_refuse_even_with_the_js_globals_kept(
    open_engine: PyodideEngine,
    workspace: WorkspacePaths,
    secret: str,
    planted: Path,
    listener: socket.socket,
    attempt: str,
    denied: str,
) -> None:
    port = listener.getsockname()[1]
    code = f"PATH = {str(planted)!r}\nPORT = {port}\n" + GLOBAL_THIS + attempt
    # One session serves every attempt: each fails inside the guest and leaves it usable.
    result = await open_engine.run(make_plan(workspace, code, session="permission-layer"))
    assert result.status == "error" and result.error is not None
    assert "NotCapable" in result.error and denied in result.error
    seen = _everything(result)
    assert planted.read_text() not in seen and secret not in seen
    assert not Path(str(planted) + ".new").exists()
    _no_connection(listener)
