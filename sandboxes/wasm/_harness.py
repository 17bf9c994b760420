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


def _main(kind: str, source: str, variable: str, final: bool, exit: bool = True) -> None:
    """Run the program and report (`final`: the value of the code's final expression too).
    `exit=False` (a prepared guest's turn) returns instead of ending the interpreter: the host
    closes the guest once it has answered."""
    report = run_program(kind, source, variable, _is_harness_file, (), final)
    _host.call(json.dumps(report).encode("utf-8"))
    if exit:
        os._exit(report["exit_code"] & 0xFF if report["exit_code"] else 0)


if __name__ == "__main__" and len(sys.argv) == 5:  # `-c HARNESS KIND SOURCE VARIABLE FINAL`
    _main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1")
