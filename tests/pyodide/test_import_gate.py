"""The Python import gate on the JS bridge is a courtesy, not a layer: code can delete it.
These tests delete it from inside and pin down what the code can then reach."""

from __future__ import annotations

import pytest

from sandboxes import WorkspacePaths
from sandboxes.pyodide import PyodideEngine

from .conftest import make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]

DELETE_THE_GATE = """
import importlib.machinery as m
import sys
sys.meta_path.clear()
sys.meta_path[:] = [m.BuiltinImporter, m.FrozenImporter, m.PathFinder]
"""
"""Guest code that removes every meta-path finder (the gate with them) and puts back only
CPython's own, as code that wants the bridge would."""

REACH = (
    DELETE_THE_GATE
    + """
reached = {}
for name in ("js", "pyodide_js", "_pyodide_core", "pyodide.ffi"):
    sys.modules.pop(name, None)
    try:
        module = __import__(name)
        reached[name] = type(module).__name__
    except ImportError as exc:
        reached[name] = type(exc).__name__
reached
"""
)

HOST_GLOBALS = (
    DELETE_THE_GATE
    + """
import _pyodide_core
g = _pyodide_core.to_js({}).constructor.constructor("return globalThis")()
names = ["Deno", "process", "require", "fetch", "WebSocket", "Worker", "prompt", "pyodide"]
[n for n in names if hasattr(g, n)]
"""
)


async def test_without_the_gate_no_finder_produces_the_js_modules(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    result = await engine.run(make_plan(workspace, REACH, session=session_id))
    assert result.status == "ok", result.stderr
    # `js` (the realm's global object) and `pyodide_js` (the whole Pyodide API: FS,
    # setStdout, mountNodeFS...) are unregistered from Pyodide's own finder, which is gone.
    # `_pyodide_core` is a builtin and `pyodide.ffi` a plain module: both still import.
    assert result.value == repr(
        {
            "js": "ModuleNotFoundError",
            "pyodide_js": "ModuleNotFoundError",
            "_pyodide_core": "module",
            "pyodide.ffi": "module",
        }
    )


async def test_without_the_gate_the_reachable_global_object_holds_nothing_of_the_host(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    result = await engine.run(make_plan(workspace, HOST_GLOBALS, session=session_id))
    assert (result.status, result.value) == ("ok", "[]")
