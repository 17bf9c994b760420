"""The guest-side harness: runs the user's program inside the WASI guest and reports back.

This file is never imported by the host. Its text reaches the guest interpreter one of two
ways: as `python -c HARNESS KIND SOURCE VARIABLE` (a guest started for the call), or as the
first turn of a guest prepared ahead of time, whose second turn calls `_main(KIND, SOURCE,
VARIABLE)`. Either way it sends its report through the runtime's host door (`_host.call`).
Everything it reports is what the guest says of itself; the host enforces every limit on its
own. It imports as little as it can: every import costs a guest time
(`traceback` alone ~60 ms), so the costly ones happen only on the error path. The guest is
CPython 3.15, whose annotations are evaluated lazily: no `from __future__` import needed.
"""

import json
import os
import sys
import time

import _host

TYPE_CHECKING = False  # `typing` costs the guest an import; this is its cheap stand-in
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any

_WORKSPACE = "/workspace"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
_MAX_VALUE_CHARS = 1_000_000


def _is_harness_file(name: str) -> bool:
    """Whether a frame belongs to the harness: `-c` text is `<string>`, a turn `<turn N>`."""
    return name == "<string>" or name.startswith("<turn ")


def _user_frames(tb: TracebackType | None) -> Any:
    """The traceback's stack without this harness's frames or runpy's."""
    import traceback

    summary = traceback.extract_tb(tb)
    kept = [f for f in summary if not _is_harness_file(f.filename) and "runpy" not in f.filename]
    return traceback.StackSummary.from_list(kept)


def _format_error(exc: BaseException) -> str:
    import traceback

    te = traceback.TracebackException.from_exception(exc)
    te.stack = _user_frames(exc.__traceback__)
    return "".join(te.format())


def _images_written_since(start: float) -> list[str]:
    found: list[str] = []
    for root, _dirs, files in os.walk(_WORKSPACE):
        for name in files:
            if name.lower().endswith(_IMAGE_SUFFIXES):
                path = os.path.join(root, name)
                try:
                    if os.stat(path).st_mtime >= start - 1:
                        found.append(path)
                except OSError:
                    pass
    return found


def _save_open_figures(start: float) -> list[str]:
    """Save matplotlib figures left open, unless the code saved an image itself."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None or _images_written_since(start):
        return []
    saved: list[str] = []
    for number in pyplot.get_fignums():
        path = os.path.join(_WORKSPACE, f"figure_{number}.png")
        pyplot.figure(number).savefig(path)
        saved.append(path)
    return saved


def _main(kind: str, source: str, variable: str, exit: bool = True) -> None:
    """Run the program and report. `exit=False` (a prepared guest's turn) returns instead of
    ending the interpreter: the host closes the guest once it has answered."""
    start = time.time()
    os.chdir(_WORKSPACE)
    sys.path.insert(0, _WORKSPACE)
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    report: dict[str, Any] = {
        "error": None,
        "error_type": None,
        "exit_code": 0,
        "value_found": False,
    }
    namespace = main.__dict__
    try:
        if kind == "code":
            sys.argv = ["-c"]
            exec(compile(source, "<code>", "exec"), namespace)
        else:
            import runpy

            sys.argv = [source]
            namespace = runpy.run_path(source, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            report["exit_code"] = 0
        elif isinstance(code, int):
            report["exit_code"] = code
        else:
            print(code, file=sys.stderr)
            report["exit_code"] = 1
    except BaseException as exc:
        import linecache
        import traceback

        if kind == "code":
            linecache.cache["<code>"] = (len(source), None, source.splitlines(True), "<code>")
        sys.stderr.write(_format_error(exc))
        report["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        report["error_type"] = type(exc).__name__
        report["exit_code"] = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    if variable:
        value = namespace.get(variable)
        if value is not None:
            report["value_found"] = True
            try:
                text = str(value)
            except BaseException as exc:
                text = f"<str() of {variable} failed: {type(exc).__name__}>"
            report["value"] = text[:_MAX_VALUE_CHARS]
    try:
        report["figures"] = _save_open_figures(start)
    except BaseException as exc:
        report["figures_error"] = f"{type(exc).__name__}: {exc}"
    _host.call(json.dumps(report).encode("utf-8"))
    if exit:
        os._exit(report["exit_code"] & 0xFF if report["exit_code"] else 0)


if __name__ == "__main__" and len(sys.argv) == 4:  # `python -c HARNESS KIND SOURCE VARIABLE`
    _main(sys.argv[1], sys.argv[2], sys.argv[3])
