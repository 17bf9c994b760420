"""The tools sandgate serves: one registry binding each tool's name, argument model, handler
and formatter; the handlers of each upstream tool set; the typed outcome of a call."""

from ._context import Approver, Caller, Ticket, ToolContext
from ._outcome import Busy, Failed, Invalid, Outcome, Ran, Refused, Told
from ._registry import ALL_TOOL_SETS, TOOLS, TOOLS_BY_NAME, ToolSet, ToolSpec

__all__ = [
    "ALL_TOOL_SETS",
    "TOOLS",
    "TOOLS_BY_NAME",
    "Approver",
    "Busy",
    "Caller",
    "Failed",
    "Invalid",
    "Outcome",
    "Ran",
    "Refused",
    "Ticket",
    "Told",
    "ToolContext",
    "ToolSet",
    "ToolSpec",
]
