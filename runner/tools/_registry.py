"""The one tool registry: each tool's name, the set it belongs to, its description, argument
model, handler and formatter, bound in one place. The service serves whatever is here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import mcp_types as types
from pydantic import BaseModel

from sandboxes import StateMode

from . import _format, _native, _paths, _pyodide, _python_code_runner, _snapshots
from ._arguments import (
    DeleteSnapshotArgs,
    ForkSessionArgs,
    ListSnapshotsArgs,
    PipInstallPackageArgs,
    PyodideExecuteArgs,
    PyodideGetMountPointsArgs,
    PyodideInstallPackagesArgs,
    PyodideListMountedDirectoryArgs,
    PyodideReadImageArgs,
    RestoreSessionArgs,
    RunCodeArgs,
    RunPythonCodeArgs,
    RunPythonFileArgs,
    SaveToFileAndRunArgs,
    SnapshotSessionArgs,
    input_schema,
)
from ._context import Caller, ToolContext
from ._describe import Route, RunTerms, ToolKind, annotations_of, describe
from ._outcome import Outcome, Ran

ToolSet = Literal["python-code-runner", "mcp-pyodide", "native"]

Handler = Callable[[ToolContext, Any, Mapping[str, Any], Caller], Awaitable[Outcome]]
"""Serves a call: (the server, the validated arguments, the raw arguments, the caller)."""
Present = Callable[[Ran, Any], types.CallToolResult]
"""Words a finished run as the tool's result, given the validated arguments."""


def _no_run(ran: Ran, args: Any) -> types.CallToolResult:
    raise AssertionError("this tool runs no code")


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool, bound: name, tool set, description, argument model, handler and formatter.

    Attributes:
        structured: Refusals and busy answers carry structured content (`status`, `rule`,
            `retry_after_s`) as the tool's own results do.
        state: The tool's own default for a session's interpreter when the policy does not
            say (`state:`): `persistent` where the upstream server keeps one namespace
            between calls (`run_python_code`, `pyodide_execute`), else `fresh`.
        output_schema: The `outputSchema` tools/list gives; `run_code`'s
            (`RUN_CODE_OUTPUT_SCHEMA`) makes refusals, busy answers and errors carry a run's
            keys too.
        title: The display title tools/list gives.
        kind: What it does, for its annotations (`runs`, `installs`, `reads`, `manages`).
        runs: For a tool that runs code, what its description says beyond the route (how
            errors come back, what it returns, its time limit argument).
    """

    name: str
    tool_set: ToolSet
    description: str
    arguments: type[BaseModel]
    handler: Handler
    present: Present = _no_run
    structured: bool = False
    state: StateMode = "fresh"
    output_schema: dict[str, Any] | None = None
    title: str = ""
    kind: ToolKind = "manages"
    runs: RunTerms | None = None

    def schema(self) -> dict[str, object]:
        return input_schema(self.arguments)

    def result(self, outcome: Outcome, args: Any) -> types.CallToolResult:
        """The MCP result of `outcome` (`args`: the validated arguments, None when invalid)."""
        if isinstance(outcome, Ran):
            return _format.with_shown(self.present(outcome, args), outcome.shown)
        return _format.outcome_result(
            outcome,
            structured=self.structured,
            run_shaped=self.output_schema is _format.RUN_CODE_OUTPUT_SCHEMA,
        )


def tool_of(spec: ToolSpec, route: Route) -> types.Tool:
    """The tools/list entry of `spec` on `route`."""
    return types.Tool(
        name=spec.name,
        title=spec.title,
        description=describe(spec.description, spec.runs, route),
        input_schema=spec.schema(),
        output_schema=spec.output_schema,
        annotations=annotations_of(spec.kind, spec.title, route),
    )


def _python(family: _format.Family, label: str | None = None) -> Present:
    def present(ran: Ran, args: Any) -> types.CallToolResult:
        variable = args.variable_to_return
        shown = label or _paths.check_file_name(args.file_name)
        return _format.python_result(family, ran.result, variable=variable, label=shown)

    return present


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "run_python_code",
        "python-code-runner",
        "Run Python code and return what it printed, or the value of `variable_to_return`.",
        RunPythonCodeArgs,
        _python_code_runner.run_python_code,
        _python("run_python_code", "python code"),
        state="persistent",
        title="Run Python code",
        kind="runs",
        runs=RunTerms("`Error running python code: <exception line>` then the traceback"),
    ),
    ToolSpec(
        "save_to_file_and_run",
        "python-code-runner",
        "Save Python code to a file in the session workspace and run it. Returns the value of "
        "`variable_to_return` if given, otherwise a success message with the printed output.",
        SaveToFileAndRunArgs,
        _python_code_runner.save_to_file_and_run,
        _python("save_to_file_and_run"),
        title="Save a Python file and run it",
        kind="runs",
        runs=RunTerms(
            "`Error saving and running code: <exception line>` then the traceback",
            always_fresh=True,
        ),
    ),
    ToolSpec(
        "pip_install_package",
        "python-code-runner",
        "Install a package into this session's workspace from the operator's package mirror "
        "(allow-listed, hash-verified wheels only).",
        PipInstallPackageArgs,
        _python_code_runner.pip_install_package,
        title="Install a Python package",
        kind="installs",
    ),
    ToolSpec(
        "run_python_file",
        "python-code-runner",
        "Run a Python file from the session workspace and return the value of "
        "`variable_to_return` if given, otherwise a success message with the printed output.",
        RunPythonFileArgs,
        _python_code_runner.run_python_file,
        _python("run_python_file"),
        title="Run a Python file",
        kind="runs",
        runs=RunTerms("`Error running file: <exception line>` then the traceback"),
    ),
    ToolSpec(
        "pyodide_execute",
        "mcp-pyodide",
        "Run Python code and return what it printed and the value of its final expression.",
        PyodideExecuteArgs,
        _pyodide.execute,
        lambda ran, args: _format.execute_result(ran.result),
        state="persistent",
        title="Run Python (REPL)",
        kind="runs",
        runs=RunTerms(
            "`Error: <exception line>` then the traceback",
            returns="final_expression",
            timeout="timeout_ms",
        ),
    ),
    ToolSpec(
        "pyodide_install-packages",
        "mcp-pyodide",
        "Install packages (space-separated names) into this session's Pyodide interpreter, "
        "from the operator's package mirror only.",
        PyodideInstallPackagesArgs,
        _pyodide.install_packages,
        title="Install Python packages",
        kind="installs",
    ),
    ToolSpec(
        "pyodide_get-mount-points",
        "mcp-pyodide",
        "List the mount points (name, path inside Pyodide, read-only or not).",
        PyodideGetMountPointsArgs,
        _pyodide.get_mount_points,
        title="List mount points",
        kind="reads",
    ),
    ToolSpec(
        "pyodide_list-mounted-directory",
        "mcp-pyodide",
        "List the files of a mount point.",
        PyodideListMountedDirectoryArgs,
        _pyodide.list_mounted_directory,
        title="List a mounted directory",
        kind="reads",
    ),
    ToolSpec(
        "pyodide_read-image",
        "mcp-pyodide",
        "Read an image file from a mount point and return it as image content.",
        PyodideReadImageArgs,
        _pyodide.read_image,
        title="Read an image",
        kind="reads",
    ),
    ToolSpec(
        "run_code",
        "native",
        "Run Python code in a sandbox and return structured content: status (ok, error, "
        "timeout, memory, output_limit, killed; denied, busy, invalid or failed when nothing "
        "ran, with rule and reason), stdout, stderr, exit code, images, "
        "files written, usage (wall ms, CPU ms, peak memory) and state (fresh: a fresh "
        "interpreter; new, kept or lost with state_note: the session's live interpreter, where "
        "the policy keeps one).",
        RunCodeArgs,
        _native.run_code,
        lambda ran, args: _format.run_code_result(ran.result),
        structured=True,
        output_schema=_format.RUN_CODE_OUTPUT_SCHEMA,
        title="Run Python code (structured result)",
        kind="runs",
        runs=RunTerms(
            "`status: error` with the exception line in `error` and the traceback in `stderr`",
            returns="structured",
            timeout="timeout_s",
        ),
    ),
    ToolSpec(
        "snapshot_session",
        "native",
        "Save a session (its workspace files, installed packages and live interpreters: "
        "globals, imports, objects) as a snapshot you can restore or fork later, also after a "
        "server restart. Returns the snapshot id. Snapshots are yours alone; how many you keep "
        "and their size are limited by the server.",
        SnapshotSessionArgs,
        _snapshots.snapshot_session,
        structured=True,
        title="Snapshot a session",
    ),
    ToolSpec(
        "restore_session",
        "native",
        "Make a session what a snapshot holds: its files, packages and interpreters are "
        "replaced by the snapshot's, and its next run continues with the snapshot's globals.",
        RestoreSessionArgs,
        _snapshots.restore_session,
        structured=True,
        title="Restore a session from a snapshot",
    ),
    ToolSpec(
        "fork_session",
        "native",
        "Make `count` new run_code sessions from one snapshot, each with its own copy of the "
        "files, packages and interpreters (a change in one is invisible to the others). "
        "Returns their names; use them as run_code(session=NAME).",
        ForkSessionArgs,
        _snapshots.fork_session,
        structured=True,
        title="Fork sessions from a snapshot",
    ),
    ToolSpec(
        "list_snapshots",
        "native",
        "List your snapshots: id, size, files, which interpreters each holds, label.",
        ListSnapshotsArgs,
        _snapshots.list_snapshots,
        structured=True,
        title="List your snapshots",
        kind="reads",
    ),
    ToolSpec(
        "delete_snapshot",
        "native",
        "Delete one of your snapshots and free its disk.",
        DeleteSnapshotArgs,
        _snapshots.delete_snapshot,
        structured=True,
        title="Delete a snapshot",
    ),
)

TOOLS_BY_NAME: dict[str, ToolSpec] = {spec.name: spec for spec in TOOLS}
ALL_TOOL_SETS: tuple[ToolSet, ...] = ("python-code-runner", "mcp-pyodide", "native")
