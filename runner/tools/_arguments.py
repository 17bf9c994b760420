"""Tool argument models (upstream names and defaults) and their validation into clear errors."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from .._errors import ArgumentError, ServerLimit

M = TypeVar("M", bound=BaseModel)
_STRICT = ConfigDict(extra="forbid", strict=True)
MAX_SHOWN_CHARS = 60


class RunPythonCodeArgs(BaseModel):
    model_config = _STRICT
    code: str = Field(description="The Python code to run.")
    variable_to_return: str | None = Field(
        default=None, description="A variable whose value to return instead of the output."
    )


class SaveToFileAndRunArgs(BaseModel):
    model_config = _STRICT
    file_name: str = Field(description="File to save the code to, inside the workspace (*.py).")
    code: str = Field(description="The Python code to save and run.")
    variable_to_return: str | None = Field(
        default=None, description="A variable whose value to return."
    )
    overwrite: bool = Field(default=True, description="Overwrite the file if it exists.")


class PipInstallPackageArgs(BaseModel):
    model_config = _STRICT
    package_name: str = Field(
        description="A package name with an optional exact pin (name or name==version)."
    )


class RunPythonFileArgs(BaseModel):
    model_config = _STRICT
    file_name: str = Field(description="A Python file in the workspace.")
    variable_to_return: str | None = Field(
        default=None, description="A variable whose value to return."
    )


class RunCodeArgs(BaseModel):
    model_config = _STRICT
    code: str = Field(description="The Python code to run.")
    session: str | None = Field(
        default=None,
        description="A session name: runs with the same name share a workspace. "
        "Defaults to the MCP session.",
    )
    timeout_s: float | int | None = Field(
        default=None, description="Wall-clock limit in seconds (clamped to the policy ceiling)."
    )
    files: dict[str, str] | None = Field(
        default=None, description="Files (workspace-relative path → text) to write before the run."
    )
    stdin: str | None = Field(default=None, description="Standard input for the program.")
    memory_mb: int | None = Field(
        default=None, description="Memory cap in MiB (clamped to the policy ceiling)."
    )


class SnapshotSessionArgs(BaseModel):
    model_config = _STRICT
    session: str | None = Field(
        default=None,
        description="A run_code session name to snapshot. Defaults to the MCP session.",
    )
    label: str | None = Field(default=None, description="A label for your own use.")
    interpreter: bool = Field(
        default=True,
        description="Also save the session's live interpreters (globals, imports, objects). "
        "False: files and installed packages only.",
    )


class RestoreSessionArgs(BaseModel):
    model_config = _STRICT
    snapshot_id: str = Field(description="The snapshot to restore (from snapshot_session).")
    session: str | None = Field(
        default=None,
        description="A run_code session name to restore into (made if new). Defaults to the "
        "MCP session. Its files, packages and interpreters are replaced by the snapshot's.",
    )


class ForkSessionArgs(BaseModel):
    model_config = _STRICT
    snapshot_id: str = Field(description="The snapshot to fork (from snapshot_session).")
    count: int = Field(default=1, description="How many new sessions to make from it.")
    prefix: str | None = Field(
        default=None,
        description="Name prefix of the new run_code sessions (PREFIX-1, PREFIX-2, …). "
        "Defaults to the snapshot id.",
    )


class ListSnapshotsArgs(BaseModel):
    model_config = _STRICT


class DeleteSnapshotArgs(BaseModel):
    model_config = _STRICT
    snapshot_id: str = Field(description="The snapshot to delete.")


class PyodideExecuteArgs(BaseModel):
    model_config = _STRICT
    code: str = Field(description="The Python code to run (the final expression is returned).")
    timeout: float | int = Field(
        default=5000, description="Milliseconds before the run is stopped (clamped by policy)."
    )


class PyodideInstallPackagesArgs(BaseModel):
    model_config = _STRICT
    package: str = Field(description="Space-separated package names (optional ==version each).")


class PyodideGetMountPointsArgs(BaseModel):
    model_config = _STRICT


class PyodideListMountedDirectoryArgs(BaseModel):
    model_config = _STRICT
    mountName: str = Field(description="A mount name from pyodide_get-mount-points.")


class PyodideReadImageArgs(BaseModel):
    model_config = _STRICT
    mountName: str = Field(description="A mount name from pyodide_get-mount-points.")
    imagePath: str = Field(description="The image's path inside the mount.")


def _describe(value: Any) -> str:
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > MAX_SHOWN_CHARS:
        shown = shown[:MAX_SHOWN_CHARS] + "…"
    return f"{kind} {shown}"


_EXPECTED = {
    "string_type": "a string",
    "bool_type": "a boolean (true or false)",
    "int_type": "an integer",
    "float_type": "a number",
    "dict_type": "an object",
    "none_required": "null",
}


def _to_argument_error(error: ErrorDetails, model: type[BaseModel]) -> ArgumentError:
    loc = [str(part) for part in error["loc"] if not str(part).endswith("-union]")]
    argument = ".".join(p for p in loc if not p.startswith(("str", "float", "int", "none")))
    kind = error["type"]
    if kind == "missing":
        field = model.model_fields[loc[0]]
        expected = _EXPECTED.get(f"{_type_name(field.annotation)}_type", "a value")
        return ArgumentError(argument, expected, "nothing (the argument is required)")
    if kind == "extra_forbidden":
        takes = ", ".join(model.model_fields)
        return ArgumentError(
            argument,
            f"only the arguments this tool takes ({takes})",
            f"an unknown argument set to {_describe(error['input'])}",
        )
    expected = _EXPECTED.get(kind, error["msg"].lower())
    field_info = model.model_fields.get(loc[0]) if loc else None
    if field_info is not None and field_info.default is None and len(loc) == 1:
        expected = f"{expected} or null"
    return ArgumentError(argument, expected, _describe(error["input"]))


def _type_name(annotation: Any) -> str:
    return {str: "string", bool: "bool", int: "int", float: "float"}.get(annotation, "value")


def validate_arguments(model: type[M], arguments: Mapping[str, Any] | None) -> M:
    """Check `arguments` against `model`.

    Raises:
        ArgumentError: the first problem, naming the argument, the expected and the actual value.
    """
    try:
        parsed = model.model_validate(dict(arguments or {}))
    except ValidationError as exc:
        raise _to_argument_error(exc.errors()[0], model) from None
    for name, value in parsed:
        _check_text(name, value)
    return parsed


def _check_text(name: str, value: Any) -> None:
    """Refuse text that is not valid Unicode (lone surrogates cannot be UTF-8)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ArgumentError(
                name,
                "valid UTF-8 text",
                f"a string with an unpaired surrogate at character {exc.start}",
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(f"{name}.{key}", key)
            _check_text(f"{name}.{key}", item)


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema clients see for a tool's arguments (a copy of it: made once per model,
    since the server looks it up for every call)."""
    return copy.deepcopy(_input_schema(model))


@functools.cache
def _input_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema["additionalProperties"] = False
    return schema


def as_float(value: float) -> float:
    """`float(value)`, but an integer too large for a float is infinity (with its sign), as a
    number literal too large for a float already is (a caller's limit is then clamped)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


MAX_ARGUMENT_DEPTH = 64
"""Deepest nesting of arrays and objects a tool call's arguments may have."""


def check_request_size(arguments: Any, max_bytes: int) -> None:
    """Refuse arguments bigger than `max_bytes` as JSON, or nested too deeply, without
    building their JSON (the walk stops as soon as the size is over).

    Raises:
        ServerLimit: the arguments are bigger than `max_bytes` (`max_request_bytes`).
        ArgumentError: they are nested more than `MAX_ARGUMENT_DEPTH` levels.
    """
    size = 0
    stack: list[tuple[Any, int, str]] = [(arguments, 0, "(arguments)")]
    while stack:
        value, depth, top = stack.pop()
        if isinstance(value, str):
            size += (len(value) if value.isascii() else _utf8_len(value)) + 2
        elif isinstance(value, Mapping | list | tuple):
            if depth > MAX_ARGUMENT_DEPTH:
                raise ArgumentError(
                    top,
                    f"JSON nested at most {MAX_ARGUMENT_DEPTH} levels deep",
                    "a value nested deeper",
                )
            size += 2
            if isinstance(value, Mapping):
                for key, item in value.items():
                    name = str(key) if depth == 0 else top
                    stack.append((str(key), depth + 1, name))
                    stack.append((item, depth + 1, name))
                    size += 2
            else:
                stack.extend((item, depth + 1, top) for item in value)
                size += len(value)
        else:
            size += 24
        if size > max_bytes:
            raise ServerLimit(
                "max_request_bytes",
                max_bytes,
                size,
                f"the arguments are larger than this server accepts (more than {max_bytes} "
                "bytes as JSON, server.max_request_bytes); send less text per call, or save "
                "large inputs as files over several calls",
            )


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
