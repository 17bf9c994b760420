"""Pyodide's JS bridge: `js`, `pyodide_js`, `pyodide.ffi`, and JavaScript evaluated from
Python reaching `Deno`, `process` or `require`. Run on every engine (elsewhere the modules do
not exist); the host checks for the secrets, the listener and the planted files."""

from __future__ import annotations

import pytest

from ._arena import Arena

pytestmark = [pytest.mark.anyio, pytest.mark.security, pytest.mark.slow]

MODULES = """
import importlib, sys
for name in ("js", "pyodide_js", "pyodide.ffi", "_pyodide_core", "pyodide.code", "pyodide.http",
             "pyodide_js._api", "pyodide._core", "_pyodide._base"):
    attempt("import " + name, lambda n=name: sorted(dir(importlib.import_module(n)))[:40])
def without_the_gate():
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_Refuse"]
    for name in [n for n in sys.modules if n.split(".")[0] in ("js", "pyodide_js")]:
        del sys.modules[name]
    import js
    return sorted(dir(js))[:40]
attempt("import js without the gate", without_the_gate)
def js_read():
    import js
    return str(js.eval("Deno.readTextFileSync(%r)" % SECRET_PATH))
attempt("!js eval Deno read", js_read)
def run_js():
    from pyodide.code import run_js
    return str(run_js("Deno.readTextFileSync(%r)" % SECRET_PATH))
attempt("!run_js", run_js)
def proxies():
    import gc
    kinds = {}
    for obj in gc.get_objects():
        kind = type(obj).__name__
        if kind.startswith("Js"):
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds
attempt("JS proxies held by Python", proxies)
report()
"""

EVAL_SYNC = """
G = None
def global_this():
    import pyodide.webloop as webloop
    return webloop.scheduleCallback.constructor("return globalThis")()
try:
    G = global_this()
except BaseException as exc:
    _RESULTS["globalThis"] = type(exc).__name__ + ": " + str(exc)[:160]
if G is not None:
    for expr in ("typeof Deno", "typeof process", "typeof require", "typeof fetch",
                 "Object.getOwnPropertyNames(globalThis).join(',')"):
        attempt(expr, lambda e=expr: str(G.eval(e)))
    for expr in ("Deno.readTextFileSync(%r)" % SECRET_PATH, "JSON.stringify(Deno.env.toObject())",
                 "Deno.env.get(%r)" % SECRET_ENV, "JSON.stringify(process.env)",
                 "require('fs').readFileSync(%r, 'utf8')" % SECRET_PATH,
                 "new Deno.Command('id').outputSync().code", "Deno.hostname()",
                 "Function('return this')().Deno.readTextFileSync(%r)" % SECRET_PATH):
        attempt("!" + expr[:40], lambda e=expr: str(G.eval(e)))
"""

EVAL_ASYNC = """
async def awaited(label, expr):
    try:
        value = await G.eval(expr)
        _RESULTS[label] = "ok " + str(value)[:600]
    except BaseException as exc:
        _RESULTS[label] = type(exc).__name__ + ": " + str(exc)[:160]
if G is not None:
    await awaited("!node:fs",
                  'import("node:fs").then(m => m.readFileSync(%r, "utf8"))' % SECRET_PATH)
    await awaited("!node:process", 'import("node:process").then(m => JSON.stringify(m.env))')
    await awaited("!child_process", 'import("node:child_process")'
                  '.then(m => String(m.execSync("cat %s")))' % SECRET_PATH)
    await awaited("!fetch", 'fetch("http://127.0.0.1:%d/").then(r => r.status)' % TCP_PORT)
    await awaited("!node:net", 'import("node:net").then(m => new Promise((ok, no) => {'
                  ' const s = m.connect(%d, "127.0.0.1", () => ok("connected"));'
                  ' s.on("error", no); }))' % TCP_PORT)
    await awaited("!file import", 'import("file://%s")' % SECRET_PATH)
"""


async def test_js_bridge_modules(arena: Arena) -> None:
    outcome = await arena.attack(MODULES)
    await arena.verify(outcome, statuses={"ok"})


async def test_javascript_evaluated_from_python(arena: Arena) -> None:
    # Top-level `await` only compiles in the Pyodide harness; elsewhere there is no JS to await.
    code = EVAL_SYNC + (EVAL_ASYNC if arena.engine == "pyodide" else "") + "report()\n"
    outcome = await arena.attack(code)
    await arena.verify(outcome, statuses={"ok"})
