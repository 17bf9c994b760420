"""The guest-side harness: runs inside Pyodide, keeps a session's globals, reports each run.

The host never imports this file. `host.mjs` runs its text once while building the memory
snapshot (so it costs nothing per process), which registers the module `_sandgate` with these
entry points: `seal()` and `warm()` (called once per process, after the JS side installed its
output handlers and before it drops the host globals), `handle(request_json)` (called per
run; returns the report as JSON text, or an awaitable of it for top-level `await`), and
`before_save()` / `after_save()` around a memory snapshot of a live interpreter (a session
saved to disk; `seal()` of the process resumed from it undoes what Pyodide's boot changed).
Every field it reports is what the guest says of itself: the host validates it and enforces
every limit on its own.
"""

import ast
import builtins
import contextlib
import importlib
import importlib.abc
import io
import json
import linecache
import os
import random
import stat
import sys
import traceback
import types
from collections.abc import Sequence
from typing import Any

WORKSPACE = "/workspace"
SITE = "/site"
CODE_NAME = "<code>"
MAX_VALUE_CHARS = 1_000_000
CO_COROUTINE = 0x80
"""Set on code compiled from source that uses top-level `await`."""
BLOCKED = ("js", "pyodide_js", "pyodide.ffi", "_pyodide_core", "pyodide.code", "pyodide.http")
"""Modules user code may not import: each hands out JS objects, a step towards the host."""
BLOCKED_PREFIXES = tuple(name + "." for name in BLOCKED)
NO_NETWORK = (
    "sandgate: this sandbox has no network (policy network: none): code cannot reach other "
    "hosts or resolve their names; read and write files in /workspace instead"
)
"""What every network attempt raises: the words of the other guests (`sandgate_program.py`)."""
LOOPBACK_HOSTS = ("localhost", "localhost.", "", "0.0.0.0", "::1", "::")

PRELOAD = (
    "asyncio", "base64", "collections", "csv", "dataclasses", "datetime", "decimal",
    "fractions", "functools", "hashlib", "itertools", "json", "math", "pathlib", "random", "re",
    "statistics", "string", "textwrap", "typing", "urllib.parse", "urllib.request",
)  # fmt: skip
"""Stdlib modules imported while the snapshot is built, so user code gets them for free."""

_main = types.ModuleType("__main__")
_state: dict[str, Any] = {"sealed": False, "saving": False, "kept": None, "door": None}


class _Refuse(importlib.abc.MetaPathFinder):
    """Refuses the JS bridge modules with a clear message. A courtesy, not a boundary: user
    code can remove it from `sys.meta_path`, and `_pyodide_core` (a builtin) still converts
    values to JS objects, whose constructors lead to the realm's global object; the realm
    hardening, Deno's permissions and the OS jail are what hold (see the engine's docstring)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> None:
        if _state["saving"]:
            return None  # Pyodide's boot from a saved image imports them (see `before_save`)
        if fullname in BLOCKED or fullname.startswith(BLOCKED_PREFIXES):
            raise ModuleNotFoundError(
                f"{fullname} is not available in this sandbox (the JS bridge is closed)",
                name=fullname,
            )
        return None


def seal(run_until_complete: bool) -> None:
    """Close the Python side of the JS bridge for user code; on a process's first boot also
    prepare the workspace, on one resumed from a saved interpreter undo what the boot changed
    (the host restores the file system and the working folder itself)."""
    if _state["sealed"]:
        _undo_boot()
    _close_bridge(run_until_complete)
    if _state["sealed"]:
        return
    _refuse_network()
    random.seed()  # imported while the base snapshot was built: each session its own sequence
    for folder in (WORKSPACE, SITE):
        os.makedirs(folder, exist_ok=True)
    os.chdir(WORKSPACE)
    sys.path[:0] = [WORKSPACE, SITE]
    _main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = _main
    _state["sealed"] = True


def _close_bridge(run_until_complete: bool) -> None:
    """Unregister the JS bridge modules and put the import gate first (on every boot)."""
    for name in list(sys.modules):
        if name in BLOCKED or name.startswith(BLOCKED_PREFIXES):
            del sys.modules[name]
    pyodide = sys.modules.get("pyodide")
    for attr in ("ffi", "code", "http"):
        if pyodide is not None and hasattr(pyodide, attr):
            delattr(pyodide, attr)
    # Pyodide's own asyncio glue imports `pyodide_js._api.config` lazily: give it a stub that
    # holds no JS object at all.
    api = types.ModuleType("pyodide_js._api")
    vars(api)["config"] = types.SimpleNamespace(enableRunUntilComplete=run_until_complete)
    stub = types.ModuleType("pyodide_js")
    vars(stub)["_api"] = api
    sys.modules["pyodide_js"] = stub
    sys.modules["pyodide_js._api"] = api
    # Pyodide's own finder hands out `js` (the realm's global object) and `pyodide_js` (the
    # whole Pyodide API: FS, _module, setStdout, mountNodeFS...): unregister both and drop the
    # finder, so that once user code removes `_Refuse` (it can) no finder produces them.
    from _pyodide._importhook import jsfinder

    jsfinder.jsproxies.clear()
    kept = [f for f in sys.meta_path if f is not jsfinder and not isinstance(f, _Refuse)]
    sys.meta_path[:] = [_Refuse(), *kept]
    _state["saving"] = False


def _undo_boot() -> None:
    """Undo, in an interpreter resumed from a saved one, what Pyodide's boot did to it: one
    `""` put first on `sys.path`, its own `sys.excepthook`, `LD_LIBRARY_PATH` reset."""
    if sys.path[:1] == [""]:
        del sys.path[0]
    kept = _state["kept"]
    if kept is not None:
        hook, library_path = kept
        sys.excepthook = hook
        if library_path is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = library_path
    _state["kept"] = None


def before_save() -> str | None:
    """Get ready for a memory snapshot of this interpreter, or say why it could not be resumed
    faithfully (then nothing changed). Until `after_save` the import gate lets the bridge
    modules through: Pyodide's boot from the image imports `_pyodide_core`, `pyodide.code` and
    `pyodide.ffi` before `seal()` closes it again; no user code runs in between, here or
    there."""
    import asyncio

    loop = asyncio.get_event_loop_policy().get_event_loop()
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if pending:
        names = ", ".join(sorted(t.get_name() for t in pending)[:5])
        return (
            f"{len(pending)} asyncio task(s) are still pending ({names}): their timers live "
            "outside the interpreter; await or cancel them before saving"
        )
    _state["kept"] = (sys.excepthook, os.environ.get("LD_LIBRARY_PATH"))
    _state["saving"] = True
    return None


def after_save() -> None:
    """The snapshot is taken (or failed): the import gate is on again."""
    _state["saving"] = False
    _state["kept"] = None


def _is_loopback(host: object) -> bool:
    text = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host or "")
    return text.lower() in LOOPBACK_HOSTS or text.startswith("127.")


def _refuse_network() -> None:
    """Every network attempt raises `NO_NETWORK`, rather than Emscripten's made-up name lookups
    and "Host is unreachable": name lookups and connections to hosts other than loopback."""
    import socket

    def refusing_lookup(original: Any) -> Any:
        def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host is not None and not _is_loopback(host):
                raise socket.gaierror(NO_NETWORK)
            return original(host, *args, **kwargs)

        return lookup

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        setattr(socket, name, refusing_lookup(getattr(socket, name)))

    def refusing(method: Any, *, last: bool = False) -> Any:
        def call(sock: Any, *args: Any) -> Any:
            address = args[-1] if args else None
            inet = sock.family in (socket.AF_INET, socket.AF_INET6)
            if inet and isinstance(address, tuple) and address and not _is_loopback(address[0]):
                raise OSError(NO_NETWORK)
            return method(sock, *args)

        return call

    for name in ("connect", "connect_ex", "sendto"):
        setattr(socket.socket, name, refusing(getattr(socket.socket, name)))


def _is_no_network(exc: BaseException | None) -> bool:
    """Whether `exc` or an exception it was raised from is the sandbox's network refusal, or
    the egress proxy's (`sandgate_refused`, set by `sandboxes/guest/sandgate_relay.py`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "sandgate_refused", False):  # the egress proxy's refusal
            return True
        with contextlib.suppress(Exception):
            if NO_NETWORK in str(exc):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def warm() -> None:
    """Use the runtime services that load lazily on the JS side, before they are cut off.
    Called again in a resumed interpreter: it changes nothing code can see (no `random`)."""
    import datetime
    import hashlib
    import time

    os.urandom(16)
    time.localtime()
    datetime.datetime.now().astimezone()
    hashlib.sha256(b"").hexdigest()


def _safe_rel(rel: str) -> str | None:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." or "\0" in p for p in parts) or rel.startswith("/"):
        return None
    return "/".join(parts)


Files = dict[str, tuple[int, int]]


def _scan(root: str) -> tuple[Files, set[str]]:
    """The regular files under `root` (path → size, mtime) and its folders (paths)."""
    found: Files = {}
    folders: set[str] = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            folders.add(os.path.relpath(os.path.join(folder, name), root))
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found, folders


def _scan_roots(request: dict[str, Any]) -> dict[str, tuple[Files, set[str]]]:
    """The files and folders of each folder the host copies back (`scan`: the workspace, rw
    mounts)."""
    roots = request.get("scan")
    listed = roots if isinstance(roots, list) else [WORKSPACE]
    return {root: _scan(root) for root in listed if isinstance(root, str)}


def _collect(before: dict[str, tuple[Files, set[str]]]) -> dict[str, Any]:
    """Per scanned folder: files the run created or changed (path, size), files it deleted,
    and folders it deleted (the host removes them when empty).

    Files in sync with the host carry mtime 0 (set when they are copied in or out), so any
    write by the run shows as a newer mtime.
    """
    files: dict[str, Any] = {}
    for root, (was, was_folders) in before.items():
        after, folders = _scan(root)
        changed = [[rel, sig[0]] for rel, sig in sorted(after.items()) if sig[1] != 0]
        files[root] = {
            "changed": changed,
            "deleted": sorted(set(was) - set(after)),
            "folders_deleted": sorted(was_folders - folders),
        }
    return {"files": files}


def _format_error(exc: BaseException, *, frames: bool) -> str:
    te = traceback.TracebackException.from_exception(exc)
    kept = [f for f in te.stack if f.filename != "<sandgate>" and "_pyodide" not in f.filename]
    if _is_no_network(exc):  # the user's frames and one line: not the library's or the chain
        stdlib = os.path.dirname(os.__file__) + os.sep
        kept = [f for f in kept if not f.filename.startswith(stdlib)]
        te.__cause__ = te.__context__ = None
    te.stack = traceback.StackSummary.from_list(kept if frames else [])
    return "".join(te.format())


def _error_line(exc: BaseException) -> str:
    """The `Type: message` line of an exception, without context lines or notes."""
    lines = [x.strip() for x in traceback.format_exception_only(type(exc), exc)]
    name = type(exc).__name__
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head == name or head.endswith("." + name):
            return line
    return lines[-1] if lines else name


def _fail(report: dict[str, Any], exc: BaseException, *, frames: bool = True) -> None:
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None or isinstance(code, int):
            report["exit_code"] = code or 0
        else:
            print(code, file=sys.stderr)
            report["exit_code"] = 1
        return
    sys.stderr.write(_format_error(exc, frames=frames))
    report["error"] = _error_line(exc)
    report["error_type"] = type(exc).__name__
    report["exit_code"] = 1


def _finish(report: dict[str, Any], request: dict[str, Any], before: Any, last: Any) -> str:
    _state["door"] = None  # no JS object is kept between runs
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    namespace = _main.__dict__
    variable = request.get("variable")
    value: Any = namespace.get(variable) if variable else last
    if value is not None and report["exit_code"] == 0:
        try:
            text = str(value) if variable else repr(value)
        except Exception as exc:
            text = f"<could not format the value: {type(exc).__name__}>"
        report["value"], report["value_found"] = text[:MAX_VALUE_CHARS], True
    report.update(_collect(before))
    return json.dumps(report)


def _compile(request: dict[str, Any]) -> tuple[types.CodeType, types.CodeType | None]:
    """The code to execute, plus the final expression to evaluate for its value: when the
    request asks for it (`final_expression`, and no `variable`) and the code ends in one."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    if request["kind"] == "file":
        rel = _safe_rel(request["source"]) or ""
        filename = os.path.join(WORKSPACE, rel)
        with open(filename, encoding="utf-8") as f:
            source = f.read()
        _main.__dict__["__file__"] = filename
        return compile(source, filename, "exec", flags=flags), None
    source = request["source"]
    _main.__dict__.pop("__file__", None)
    linecache.cache[CODE_NAME] = (len(source), None, source.splitlines(True), CODE_NAME)
    if not request.get("final_expression") or request.get("variable"):
        return compile(source, CODE_NAME, "exec", flags=flags), None
    tree = ast.parse(source, CODE_NAME)
    last: types.CodeType | None = None
    final = tree.body[-1] if tree.body else None
    if isinstance(final, ast.Expr):
        tree.body.pop()
        last = compile(ast.Expression(final.value), CODE_NAME, "eval", flags=flags)
    return compile(tree, CODE_NAME, "exec", flags=flags), last


def _relay_call(frame: bytes) -> bytes:
    """One egress frame to the host's relay (`sandboxes._relay`) through the run's door, in
    base64 text both ways. Outside a run with egress there is no door: the sandbox's refusal."""
    import base64

    door = _state["door"]
    if door is None:
        return json.dumps({"refused": NO_NETWORK, "no_network": True}).encode() + b"\n"
    return base64.b64decode(str(door(base64.b64encode(frame).decode("ascii"))))


def _egress_on(door: Any) -> None:
    """Send this interpreter's HTTP requests (urllib, requests, `pyodide.http`) through the
    host's relay for this run, whose client (`sandboxes/guest/sandgate_relay.py`) the host sends the
    first time."""
    _state["door"] = door
    relay = sys.modules.get("_sandgate_relay")
    if relay is None:
        relay = sys.modules["_sandgate_relay"] = types.ModuleType("_sandgate_relay")
        source = _relay_call(b'{"op":"client"}\n').partition(b"\n")[2]
        exec(compile(source, "<sandgate>", "exec"), relay.__dict__)
    relay.start(_relay_call, pyodide=True)


def handle(line: str, door: Any = None) -> Any:
    """Run one request; return its report as JSON text, or an awaitable of it. `door`: the
    host's egress door, for a run whose request says `egress`."""
    request: dict[str, Any] = json.loads(line)
    if door is not None and request.get("egress") is True:
        _egress_on(door)
    importlib.invalidate_caches()  # the host may have copied modules in since the last run
    before = _scan_roots(request)
    sys.stdin = io.StringIO(request.get("stdin") or "")
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # undo a previous run's rebinding
    sys.argv = [request["source"] if request["kind"] == "file" else "-c"]
    report: dict[str, Any] = {"exit_code": 0, "error": None, "error_type": None}
    report["value_found"] = False
    namespace = _main.__dict__
    try:
        os.chdir(WORKSPACE)  # each run starts in the workspace, wherever the last one left
        body, last = _compile(request)
    except BaseException as exc:
        _fail(report, exc, frames=False)
        return _finish(report, request, before, None)
    if (body.co_flags | (last.co_flags if last else 0)) & CO_COROUTINE:
        return _run_async(report, request, before, body, last)
    value: Any = None
    try:
        exec(body, namespace)
        if last is not None:
            value = eval(last, namespace)
    except BaseException as exc:
        _fail(report, exc)
    return _finish(report, request, before, value)


async def _run_async(
    report: dict[str, Any],
    request: dict[str, Any],
    before: Any,
    body: types.CodeType,
    last: types.CodeType | None,
) -> str:
    namespace = _main.__dict__
    value: Any = None
    try:
        pending = eval(body, namespace)
        if pending is not None:
            await pending
        if last is not None:
            value = eval(last, namespace)
            if last.co_flags & CO_COROUTINE:
                value = await value
    except BaseException as exc:
        _fail(report, exc)
    return _finish(report, request, before, value)


_module = types.ModuleType("_sandgate")
vars(_module).update(
    seal=seal, handle=handle, warm=warm, before_save=before_save, after_save=after_save
)
for _name in PRELOAD:
    __import__(_name)
sys.modules["_sandgate"] = _module
