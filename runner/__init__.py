"""The sandgate MCP server: tools, sessions, transports and the `sandgate` command."""

from ._app import Config, open_service
from ._cli import main
from ._errors import ArgumentError, RunnerError, ServerLimit, SetupError, UnknownTool
from ._server import build_server, connection_scope
from ._service import Caller, Service
from ._tools import ALL_TOOL_SETS, TOOLS, ToolSpec
from .batch import BatchSummary, Job, run_batch

__all__ = [
    "ALL_TOOL_SETS",
    "TOOLS",
    "ArgumentError",
    "BatchSummary",
    "Caller",
    "Config",
    "Job",
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
