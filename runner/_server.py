"""The MCP server: tool listing and calls over the SDK's low-level server, on stdio or HTTP."""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from policies import NeedsApproval

from ._service import Caller, Service

logger = logging.getLogger("sandgate.server")

SERVER_NAME = "sandgate"
SESSION_HEADER = "mcp-session-id"
GRANT_SCOPE_KEY = "sandgate.grant"


class _SessionIds:
    """A stable id per client connection: the HTTP session header, else the connection."""

    def __init__(self) -> None:
        self._by_connection: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def of(self, ctx: ServerRequestContext[Any, Any]) -> str:
        request = ctx.request
        headers = getattr(request, "headers", None)
        if headers is not None and (sid := headers.get(SESSION_HEADER)):
            return f"http:{sid}"
        session = ctx.session
        known = self._by_connection.get(session)
        if known is None:
            known = f"conn:{uuid.uuid4().hex}"
            self._by_connection[session] = known
        return known


def _grant_of(ctx: ServerRequestContext[Any, Any]) -> str:
    request = ctx.request
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and isinstance(scope.get(GRANT_SCOPE_KEY), str):
        return str(scope[GRANT_SCOPE_KEY])
    return "local"


def _approver(
    ctx: ServerRequestContext[Any, Any],
) -> Callable[[NeedsApproval], Awaitable[bool | None]] | None:
    caps = ctx.session.client_capabilities
    if caps is None or caps.elicitation is None:
        return None

    async def ask(need: NeedsApproval) -> bool | None:
        try:
            answer = await ctx.session.elicit_form(
                f"sandgate: approve this call? {need.reason} (approval {need.approval_id})",
                {
                    "type": "object",
                    "properties": {"approve": {"type": "boolean", "title": "Approve"}},
                    "required": ["approve"],
                },
                related_request_id=ctx.request_id,
            )
        except Exception as exc:  # a client that cannot answer falls back to `sandgate approve`
            logger.info("elicitation for approval %s failed: %s", need.approval_id, exc)
            return None
        if answer.action != "accept":
            return False
        return bool((answer.content or {}).get("approve"))

    return ask


def build_server(
    service: Service,
    *,
    lifespan: Callable[[Server[Any]], Any] | None = None,
) -> Server[Any]:
    """The low-level MCP server serving `service`'s tools."""
    ids = _SessionIds()

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=service.list_tools())

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = Caller(grant=_grant_of(ctx), session=ids.of(ctx), approver=_approver(ctx))
        return await service.call_tool(params.name, params.arguments, caller)

    def input_schema(name: str) -> dict[str, Any] | None:
        for tool in service.list_tools():
            if tool.name == name:
                return dict(tool.input_schema)
        return None

    kwargs: dict[str, Any] = {}
    if lifespan is not None:
        kwargs["lifespan"] = lifespan
    return Server(
        SERVER_NAME,
        version=_version(),
        instructions=(
            "Runs Python in sandboxes (no network, capped time/memory/output) behind a policy. "
            "Files persist in a per-session workspace."
        ),
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        get_tool_input_schema=input_schema,
        **kwargs,
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sandgate")
    except PackageNotFoundError:
        return "0+unknown"


@asynccontextmanager
async def no_lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
    yield {}
