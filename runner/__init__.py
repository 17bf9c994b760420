"""The sandgate MCP server: tools, sessions, transports and the `sandgate` command."""

from ._app import Config, open_service
from ._cli import main
from ._errors import ArgumentError, RunnerError, ServerLimit, SetupError, UnknownTool
from ._service import Caller, Service
from .batch import BatchSummary, Job, run_batch
from .serving import build_server, connection_scope
from .tools import ALL_TOOL_SETS, TOOLS, Outcome, ToolSpec

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
