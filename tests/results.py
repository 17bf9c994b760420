"""Reading MCP tool results in tests."""

from __future__ import annotations

import mcp_types as types


def text_of(result: object) -> str:
    """The text blocks of a tool result, joined (fails when `result` is not a tool result)."""
    assert isinstance(result, types.CallToolResult), result
    return "".join(b.text for b in result.content if isinstance(b, types.TextContent))
