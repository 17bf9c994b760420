"""Serving the tools over MCP: the protocol server (tools, resources, approvals as
elicitations), its transports (stdio, streamable HTTP with bearer grants and per-grant HTTP
sessions) and what a cancelled request answers."""

from ._server import APPROVAL_INPUT_KEY, APPROVAL_STATE_PREFIX, build_server, connection_scope
from ._transports import serve_http, serve_stdio

__all__ = [
    "APPROVAL_INPUT_KEY",
    "APPROVAL_STATE_PREFIX",
    "build_server",
    "connection_scope",
    "serve_http",
    "serve_stdio",
]
