"""The wasm guest's harness: runs the user's program inside the WASI guest and reports back.

This file is never imported by the host. Its text, after the shared program runner's
(`sandboxes/images/python/sandgate_program.py`, which defines `run_program`), reaches the guest
interpreter one of two ways: as `python -c HARNESS KIND SOURCE VARIABLE FINAL [EGRESS]` (a guest
started for the call; FINAL is "1" to report the final expression's value, else ""; EGRESS "1"
when the run may reach the network through the host), or as the first turn of a guest prepared
ahead of time, whose second turn calls `_main(KIND, SOURCE, VARIABLE, FINAL, egress=...)`.
Either way it sends its report through the runtime's
host door (`_host.call`). The guest is CPython 3.15, whose annotations are evaluated lazily:
each annotated function carries an `__annotate__` code object that every guest unmarshals and
makes with the harness (10 of its code objects, ~75K of the ~1.17M instructions loading it
cost). So the harness's functions are typed by type comments, which cost the guest nothing.
"""

import json
import os
import sys

import _host

TYPE_CHECKING = False  # `typing` costs the guest an import; this is its cheap stand-in
if TYPE_CHECKING:  # sandgate_program's names, defined ahead of this text in the guest
    from collections.abc import Callable
    from typing import Any, cast

    WORKSPACE = "/workspace"
    run_program = cast("Callable[..., dict[str, Any]]", None)
    refuse_network = cast("Callable[[], None]", None)
    watch_image_writes = cast("Callable[[], None]", None)


def _is_harness_file(name):  # type: (str) -> bool
    """Whether a frame belongs to the harness: `-c` text is `<string>`, a turn `<turn N>`."""
    return name == "<string>" or name.startswith("<turn ")


_SESSION_MAIN = None
"""A persistent session's `__main__` (`_main(persistent=True)`), kept between its turns."""


def _main(
    kind,  # type: str
    source,  # type: str
    variable,  # type: str
    final,  # type: bool
    exit=True,  # type: bool
    persistent=False,  # type: bool
    stdin=None,  # type: str | None
    egress=False,  # type: bool
):  # type: (...) -> None
    """Run the program and report (`final`: the value of the code's final expression too).
    `exit=False` (a prepared guest's turn) returns instead of ending the interpreter: the host
    closes the guest once it has answered. `persistent` (a session's guest kept between runs,
    `_resident`): the program runs in the session's `__main__`, kept for its next turn, and the
    harness's own `__main__` is back in `sys.modules` between turns. `stdin`: the program's
    standard input, for a turn (which has none of its own). `egress`: the run may reach the
    network through the host (`_egress_on`)."""
    global _SESSION_MAIN
    if egress:
        _egress_on()
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


def _ready():  # type: () -> None
    """A prepared guest's set-up ahead of its call (`_prepared`): what `run_program` does first
    in every interpreter, all of it idempotent, so the call's own turn skips it (~1 ms): the
    network refusal, the image-write watch, the working folder. `_socket` is imported here,
    where a started guest's run only patches it when code imports it (`refuse_network`): a
    prepared guest holds it patched already (in its image, for the worker's later guests), so a
    call that reaches for the network does not pay that import."""
    if "_socket" in sys.builtin_module_names:  # a guest without it has no sockets at all
        import _socket  # noqa: F401
    refuse_network()
    watch_image_writes()
    os.chdir(WORKSPACE)


def _egress_on():  # type: () -> None
    """Send this interpreter's HTTP requests through the host's relay, whose client
    (`sandboxes/guest/sandgate_relay.py`) the host sends the first time."""
    relay = sys.modules.get("_sandgate_relay")
    if relay is None:
        relay = sys.modules["_sandgate_relay"] = type(sys)("_sandgate_relay")
        exec(_host.call(b'\x00{"op":"client"}\n').partition(b"\n")[2], relay.__dict__)
    relay.start(lambda frame: bytes(_host.call(b"\x00" + frame)))


# `-c HARNESS KIND SOURCE VARIABLE FINAL [EGRESS]`
if __name__ == "__main__" and len(sys.argv) in (5, 6):
    _main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", egress=sys.argv[5:] == ["1"])
