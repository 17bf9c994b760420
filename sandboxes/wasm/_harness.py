"""The wasm guest's harness: runs the user's program inside the WASI guest and reports back.

This file is never imported by the host. Its text, after the shared program runner's
(`sandboxes/images/python/sandgate_program.py`, which defines `run_program`), reaches the guest
interpreter one of two ways: as `python -c HARNESS KIND SOURCE VARIABLE FINAL` (a guest started
for the call; FINAL is "1" to report the final expression's value, else ""), or as the first
turn of a guest prepared ahead of time, whose second turn calls
`_main(KIND, SOURCE, VARIABLE, FINAL)`. Either way it sends its report through the runtime's
host door (`_host.call`). The guest is CPython 3.15, whose annotations are evaluated lazily.
"""

import json
import os
import sys

import _host

TYPE_CHECKING = False  # `typing` costs the guest an import; this is its cheap stand-in
if TYPE_CHECKING:
    from typing import Any

    def run_program(*args: Any) -> dict[str, Any]: ...  # from sandgate_program, ahead of this


def _is_harness_file(name: str) -> bool:
    """Whether a frame belongs to the harness: `-c` text is `<string>`, a turn `<turn N>`."""
    return name == "<string>" or name.startswith("<turn ")


_SESSION_MAIN = None
"""A persistent session's `__main__` (`_main(persistent=True)`), kept between its turns."""


def _main(
    kind: str,
    source: str,
    variable: str,
    final: bool,
    exit: bool = True,
    persistent: bool = False,
    stdin: str | None = None,
) -> None:
    """Run the program and report (`final`: the value of the code's final expression too).
    `exit=False` (a prepared guest's turn) returns instead of ending the interpreter: the host
    closes the guest once it has answered. `persistent` (a session's guest kept between runs,
    `_resident`): the program runs in the session's `__main__`, kept for its next turn, and the
    harness's own `__main__` is back in `sys.modules` between turns. `stdin`: the program's
    standard input, for a turn (which has none of its own)."""
    global _SESSION_MAIN
    namespace = None
    harness_main = sys.modules.get("__main__")
    if persistent:
        if _SESSION_MAIN is None:
            _SESSION_MAIN = type(sys)("__main__")
        sys.modules["__main__"] = _SESSION_MAIN
        namespace = _SESSION_MAIN
    if stdin is not None:
        import io

        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8", "surrogateescape")))
    try:
        report = run_program(kind, source, variable, _is_harness_file, (), final, namespace)
    finally:
        if persistent and harness_main is not None:
            sys.modules["__main__"] = harness_main
    _host.call(json.dumps(report).encode("utf-8"))
    if exit:
        os._exit(report["exit_code"] & 0xFF if report["exit_code"] else 0)


if __name__ == "__main__" and len(sys.argv) == 5:  # `-c HARNESS KIND SOURCE VARIABLE FINAL`
    _main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1")
