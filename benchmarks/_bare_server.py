"""The SDK alone: a low-level MCP server whose one tool, `run_python_code`, answers `hello`
at once (no policy, no sandbox), served the way sandgate serves (`python _bare_server.py
stdio` or `python _bare_server.py http PORT`): the floor the MCP SDK, uvicorn and asyncio set
under `runner_overhead.py --bare`."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

TOOL = types.Tool(
    name="run_python_code",
    description="answers hello",
    input_schema={"type": "object", "properties": {"code": {"type": "string"}}},
)


def _server() -> Server[Any]:
    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[TOOL])

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text="hello")])

    return Server("bare", on_list_tools=on_list_tools, on_call_tool=on_call_tool)


async def _stdio() -> None:
    server = _server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def _http(port: int) -> None:
    app = _server().streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    if sys.argv[1:2] == ["stdio"]:
        asyncio.run(_stdio())
    else:
        asyncio.run(_http(int(sys.argv[2])))
