"""Sandbox engines for untrusted Python: value types, the engine contract and the engines."""

from ._engine import Engine
from ._errors import EngineBusy, EngineCrashed, EngineNotReady, EngineUnavailable, SandboxError
from ._fake import FakeEngine
from ._files import read_regular_file
from ._types import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_OUTPUT_BYTES,
    DEFAULT_PROCESSES,
    DEFAULT_WALL_TIMEOUT_S,
    DEFAULT_WORKSPACE_BYTES,
    ExecutionPlan,
    HostMount,
    Image,
    Limits,
    NetworkMode,
    Program,
    ProgramKind,
    RunResult,
    Status,
    Usage,
    WorkspacePaths,
)
from .wasm import WasmEngine

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_OUTPUT_BYTES",
    "DEFAULT_PROCESSES",
    "DEFAULT_WALL_TIMEOUT_S",
    "DEFAULT_WORKSPACE_BYTES",
    "Engine",
    "EngineBusy",
    "EngineCrashed",
    "EngineNotReady",
    "EngineUnavailable",
    "ExecutionPlan",
    "FakeEngine",
    "HostMount",
    "Image",
    "Limits",
    "NetworkMode",
    "Program",
    "ProgramKind",
    "RunResult",
    "SandboxError",
    "Status",
    "Usage",
    "WasmEngine",
    "WorkspacePaths",
    "read_regular_file",
]
