"""The tools sandgate serves: names, descriptions and argument models, as upstream has them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from ._arguments import (
    PipInstallPackageArgs,
    PyodideExecuteArgs,
    PyodideGetMountPointsArgs,
    PyodideInstallPackagesArgs,
    PyodideListMountedDirectoryArgs,
    PyodideReadImageArgs,
    RunCodeArgs,
    RunPythonCodeArgs,
    RunPythonFileArgs,
    SaveToFileAndRunArgs,
    input_schema,
)

ToolSet = Literal["python-code-runner", "mcp-pyodide", "native"]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool: its name, the set it belongs to, its description and argument model."""

    name: str
    tool_set: ToolSet
    description: str
    arguments: type[BaseModel]

    def schema(self) -> dict[str, object]:
        return input_schema(self.arguments)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "run_python_code",
        "python-code-runner",
        "Run Python code in a fresh sandboxed interpreter and return what it printed, or the "
        "value of `variable_to_return`. Errors come back as `Error: …` with the traceback.",
        RunPythonCodeArgs,
    ),
    ToolSpec(
        "save_to_file_and_run",
        "python-code-runner",
        "Save Python code to a file in the session workspace and run it. Returns the value of "
        "`variable_to_return` if given, otherwise a success message with the printed output.",
        SaveToFileAndRunArgs,
    ),
    ToolSpec(
        "pip_install_package",
        "python-code-runner",
        "Install a package into this session's workspace from the operator's package mirror "
        "(allow-listed, hash-verified wheels only).",
        PipInstallPackageArgs,
    ),
    ToolSpec(
        "run_python_file",
        "python-code-runner",
        "Run a Python file from the session workspace and return the value of "
        "`variable_to_return` if given, otherwise a success message with the printed output.",
        RunPythonFileArgs,
    ),
    ToolSpec(
        "pyodide_execute",
        "mcp-pyodide",
        "Run Python code in this session's Pyodide interpreter (state is kept between calls). "
        "Returns what it printed and the value of its final expression; images it writes to "
        "/workspace come back as images.",
        PyodideExecuteArgs,
    ),
    ToolSpec(
        "pyodide_install-packages",
        "mcp-pyodide",
        "Install packages (space-separated names) into this session's Pyodide interpreter, "
        "from the operator's package mirror only.",
        PyodideInstallPackagesArgs,
    ),
    ToolSpec(
        "pyodide_get-mount-points",
        "mcp-pyodide",
        "List the mount points (name, path inside Pyodide, read-only or not).",
        PyodideGetMountPointsArgs,
    ),
    ToolSpec(
        "pyodide_list-mounted-directory",
        "mcp-pyodide",
        "List the files of a mount point.",
        PyodideListMountedDirectoryArgs,
    ),
    ToolSpec(
        "pyodide_read-image",
        "mcp-pyodide",
        "Read an image file from a mount point and return it as image content.",
        PyodideReadImageArgs,
    ),
    ToolSpec(
        "run_code",
        "native",
        "Run Python code in a sandbox and return structured content: status (ok, error, "
        "timeout, memory, output_limit, killed, denied), stdout, stderr, exit code, images, "
        "files written and usage (wall ms, CPU ms, peak memory).",
        RunCodeArgs,
    ),
)

TOOLS_BY_NAME: dict[str, ToolSpec] = {spec.name: spec for spec in TOOLS}
ALL_TOOL_SETS: tuple[ToolSet, ...] = ("python-code-runner", "mcp-pyodide", "native")
