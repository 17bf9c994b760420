"""The sandgate MCP server: tools, sessions, transports and the `sandgate` command.

The names below load on first use (PEP 562), so `sandgate --help`, or a command that needs
neither the MCP SDK nor the engines, does not import them (`import runner.cli` costs only
what the command line itself needs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import Config, open_service
    from ._errors import ArgumentError, RunnerError, ServerLimit, SetupError, UnknownTool
    from ._service import Caller, Service
    from .batch import BatchSummary, Job, run_batch
    from .cli import main
    from .serving import build_server, connection_scope
    from .tools import ALL_TOOL_SETS, TOOLS, Outcome, ToolSpec

_WHERE = {
    "ALL_TOOL_SETS": ".tools",
    "TOOLS": ".tools",
    "ArgumentError": "._errors",
    "BatchSummary": ".batch",
    "Caller": "._service",
    "Config": "._app",
    "Job": ".batch",
    "Outcome": ".tools",
    "RunnerError": "._errors",
    "ServerLimit": "._errors",
    "Service": "._service",
    "SetupError": "._errors",
    "ToolSpec": ".tools",
    "UnknownTool": "._errors",
    "build_server": ".serving",
    "connection_scope": ".serving",
    "main": ".cli",
    "open_service": "._app",
    "run_batch": ".batch",
}
"""Each public name and the module it comes from."""

__all__ = [
    "ALL_TOOL_SETS",
    "TOOLS",
    "ArgumentError",
    "BatchSummary",
    "Caller",
    "Config",
    "Job",
    "Outcome",
    "RunnerError",
    "ServerLimit",
    "Service",
    "SetupError",
    "ToolSpec",
    "UnknownTool",
    "build_server",
    "connection_scope",
    "main",
    "open_service",
    "run_batch",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
