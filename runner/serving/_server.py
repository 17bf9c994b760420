"""The MCP server: tool listing and calls over the SDK's low-level server, on stdio or HTTP."""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST

from policies import NeedsApproval
from sandboxes import SandboxError

from .._errors import ArgumentError, NotFound, RunnerError, ServerLimit
from .._service import AskHuman, Caller, Service
from ..tools import TOOLS_BY_NAME
from ._backend import LocalBackend, McpBackend
from ._cancelled import EarlyCancels

logger = logging.getLogger("sandgate.server")

SERVER_NAME = "sandgate"
SESSION_HEADER = "mcp-session-id"
GRANT_SCOPE_KEY = "sandgate.grant"
RESOURCE_NOT_FOUND = -32002
"""MCP's code for resources/read of a resource that does not exist."""
SERVER_LIMIT = -32000
"""A request refused because it would take the server past one of its limits (`server:`);
JSON-RPC leaves -32000 to -32099 to the implementation."""


CONNECTION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sandgate_connection", default=None
)
"""The connection a request arrived on, set by the transport that serves it (stdio)."""


@contextmanager
def connection_scope(name: str | None = None) -> Iterator[str]:
    """Mark everything served inside as one connection, hence one session workspace."""
    value = name or f"conn:{uuid.uuid4().hex}"
    token = CONNECTION.set(value)
    try:
        yield value
    finally:
        CONNECTION.reset(token)


def session_id_of(ctx: ServerRequestContext[Any, Any], grant: str) -> str:
    """The session a request belongs to.

    The `Mcp-Session-Id` header on legacy HTTP; the connection on stdio; otherwise (the
    session-less 2026-07-28 protocol over HTTP) the grant's own default session.
    """
    headers = getattr(ctx.request, "headers", None)
    if headers is not None and (sid := headers.get(SESSION_HEADER)):
        return f"http:{sid}"
    connection = CONNECTION.get()
    if connection is not None:
        return connection
    return f"grant:{grant}"


def _grant_of(ctx: ServerRequestContext[Any, Any]) -> str:
    request = ctx.request
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and isinstance(scope.get(GRANT_SCOPE_KEY), str):
        return str(scope[GRANT_SCOPE_KEY])
    return "local"


APPROVAL_INPUT_KEY = "sandgate_approval"
APPROVAL_STATE_PREFIX = "sandgate-approval:"
APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean", "title": "Approve"}},
    "required": ["approve"],
}


def protocol_error(exc: RunnerError | SandboxError, *, uri: str = "") -> MCPError:
    """The JSON-RPC error for a refused resources request (one map, every code valid): a
    missing file, a wrong argument, a server limit, host file operations stuck or too many."""
    if isinstance(exc, NotFound):
        return MCPError(RESOURCE_NOT_FOUND, str(exc), {"uri": uri})
    if isinstance(exc, ArgumentError):
        return MCPError(INVALID_PARAMS, str(exc), {"argument": exc.argument})
    if isinstance(exc, ServerLimit):
        data = {"setting": f"server.{exc.setting}", "limit": exc.limit, "value": exc.value}
        return MCPError(SERVER_LIMIT, str(exc), data)
    return MCPError(INTERNAL_ERROR, str(exc))


async def initialize_first(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    """Server middleware: a request before `initialize` gets an error that says so. The SDK's
    gate answers it `-32602` "Invalid request parameters" with empty data, as if the params
    were wrong; that error (the only one of that shape) becomes `-32600` naming the method."""
    try:
        return await call_next(ctx)
    except MCPError as exc:
        gate = (INVALID_PARAMS, "Invalid request parameters", "")
        if (exc.code, exc.message, exc.data) != gate:
            raise
        message = (
            f"Invalid Request: '{ctx.method}' came before 'initialize'; a client opens the "
            "connection with an 'initialize' request (then 'notifications/initialized') first"
        )
        data = {"method": ctx.method, "expected": "initialize"}
        raise MCPError(INVALID_REQUEST, message, data) from None


def _can_elicit(ctx: ServerRequestContext[Any, Any]) -> bool:
    caps = ctx.session.client_capabilities
    return caps is not None and caps.elicitation is not None


def _approval_message(need: NeedsApproval) -> str:
    return f"sandgate: approve this call? {need.reason} (approval {need.approval_id})"


def _answer_of(params: types.CallToolRequestParams) -> tuple[str, bool] | None:
    """A client's answer to an approval sent with this call: the approval id (from
    `request_state`; "" when it names none) and whether the human approved. Any call that
    carries our state prefix or our input response counts as answering, so that the gate
    checks (and refuses) every such answer instead of it being silently ignored."""
    state = params.request_state or ""
    responses = params.input_responses or {}
    if not state.startswith(APPROVAL_STATE_PREFIX) and APPROVAL_INPUT_KEY not in responses:
        return None
    response = responses.get(APPROVAL_INPUT_KEY)
    approved = (
        isinstance(response, types.ElicitResult)
        and response.action == "accept"
        and (response.content or {}).get("approve") is True
    )
    approval_id = (
        state[len(APPROVAL_STATE_PREFIX) :] if state.startswith(APPROVAL_STATE_PREFIX) else ""
    )
    return approval_id, approved


def _input_required(need: NeedsApproval) -> types.InputRequiredResult:
    return types.InputRequiredResult(
        input_requests={
            APPROVAL_INPUT_KEY: types.ElicitRequest(
                params=types.ElicitRequestFormParams(
                    message=_approval_message(need), requested_schema=APPROVAL_SCHEMA
                )
            )
        },
        request_state=APPROVAL_STATE_PREFIX + need.approval_id,
    )


def _approver(
    ctx: ServerRequestContext[Any, Any],
) -> Callable[[NeedsApproval], Awaitable[bool | None]] | None:
    """Asks over the back-channel (handshake-era connections); None where there is none.
    `Service.decide` calls it only when the policy lets clients answer (`approvals.by:
    client`); its answer then goes through the gate's checks like any client answer."""
    if not _can_elicit(ctx) or not ctx.session.can_send_request:
        return None

    async def ask(need: NeedsApproval) -> bool | None:
        try:
            answer = await ctx.session.elicit_form(
                _approval_message(need), APPROVAL_SCHEMA, related_request_id=ctx.request_id
            )
        except Exception as exc:  # a client that cannot answer falls back to `sandgate approve`
            logger.info("elicitation for approval %s failed: %s", need.approval_id, exc)
            return None
        if answer.action != "accept":
            return False
        return bool((answer.content or {}).get("approve"))

    return ask


def build_server(
    service: Service | McpBackend,
    *,
    lifespan: Callable[[Server[Any]], Any] | None = None,
) -> Server[Any]:
    """The low-level MCP server serving `service`'s tools (a `Service` on this machine, or
    any `McpBackend`: a cluster's front end)."""
    backend: McpBackend = LocalBackend(service) if isinstance(service, Service) else service

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=backend.list_tools(_grant_of(ctx)))

    async def on_call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        grant = _grant_of(ctx)
        approver = _approver(ctx)
        elicitation = _can_elicit(ctx)
        caller = Caller(
            grant=grant,
            session=session_id_of(ctx, grant),
            approver=approver,
            can_ask_input=approver is None and elicitation,
            answer=_answer_of(params),
            elicitation=elicitation,
        )
        try:
            return await backend.call_tool(params.name, params.arguments, caller)
        except AskHuman as ask:
            return _input_required(ask.need)

    async def on_list_resources(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        grant = _grant_of(ctx)
        caller = Caller(grant=grant, session=session_id_of(ctx, grant))
        try:
            found = await backend.list_resources(caller)
        except (RunnerError, SandboxError) as exc:
            raise protocol_error(exc) from None
        return types.ListResourcesResult(resources=found)

    async def on_list_resource_templates(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        grant = _grant_of(ctx)
        caller = Caller(grant=grant, session=session_id_of(ctx, grant))
        try:
            templates = await backend.resource_templates(caller)
        except (RunnerError, SandboxError) as exc:
            raise protocol_error(exc) from None
        return types.ListResourceTemplatesResult(resource_templates=templates)

    async def on_read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        grant = _grant_of(ctx)
        caller = Caller(grant=grant, session=session_id_of(ctx, grant))
        try:
            return await backend.read_resource(caller, str(params.uri))
        except (RunnerError, SandboxError) as exc:
            raise protocol_error(exc, uri=str(params.uri)) from None

    def input_schema(name: str) -> dict[str, Any] | None:
        if name not in TOOLS_BY_NAME or name not in backend.tool_names():
            return None
        return TOOLS_BY_NAME[name].schema()

    kwargs: dict[str, Any] = {}
    if lifespan is not None:
        kwargs["lifespan"] = lifespan
    server = Server(
        SERVER_NAME,
        version=_version(),
        instructions=(
            "Runs Python in sandboxes (no network, capped time/memory/output) behind a policy. "
            "Files persist in a per-session workspace."
        ),
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        on_list_resources=on_list_resources,
        on_list_resource_templates=on_list_resource_templates,
        on_read_resource=on_read_resource,
        get_tool_input_schema=input_schema,
        **kwargs,
    )
    cancels = EarlyCancels(lambda ctx: session_id_of(ctx, _grant_of(ctx)))
    server.middleware.extend([initialize_first, cancels])
    return server


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sandgate")
    except PackageNotFoundError:
        return "0+unknown"


@asynccontextmanager
async def no_lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
    yield {}
