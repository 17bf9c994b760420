"""What the MCP layer serves from: one machine's `Service`, or a cluster's front end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import mcp_types as types

from .._service import Caller, Service
from ._resources import list_resources, read_resource, resource_templates


class McpBackend(Protocol):
    """What `build_server` needs: tools for a grant, calls, and a session's files as resources.

    `call_tool` never raises for anything a client can send, except `AskHuman` (the server
    answers with an elicitation). The resource methods raise `RunnerError` or `SandboxError`
    (mapped by `protocol_error`) or an `MCPError` already made.
    """

    def tool_names(self) -> list[str]:
        """The tools served (policy-hidden ones removed)."""
        ...

    def list_tools(self, grant: str) -> list[types.Tool]:
        """What tools/list shows `grant`."""
        ...

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None, caller: Caller
    ) -> types.CallToolResult:
        """Serve one call."""
        ...

    async def list_resources(self, caller: Caller) -> list[types.Resource]:
        """Files of `caller`'s session and the operator's mounts."""
        ...

    async def resource_templates(self, caller: Caller) -> list[types.ResourceTemplate]:
        """The URI templates of `caller`'s mounts."""
        ...

    async def read_resource(self, caller: Caller, uri: str) -> types.ReadResourceResult:
        """One file of `caller`'s mounts."""
        ...


class LocalBackend:
    """A `Service` on this machine as an `McpBackend` (its mounts read here)."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def tool_names(self) -> list[str]:
        return self._service.tool_names()

    def list_tools(self, grant: str) -> list[types.Tool]:
        return self._service.list_tools(grant)

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None, caller: Caller
    ) -> types.CallToolResult:
        return await self._service.call_tool(name, arguments, caller)

    async def list_resources(self, caller: Caller) -> list[types.Resource]:
        return await list_resources(self._service.mounts(caller), grant=caller.grant)

    async def resource_templates(self, caller: Caller) -> list[types.ResourceTemplate]:
        return resource_templates(self._service.mounts(caller))

    async def read_resource(self, caller: Caller, uri: str) -> types.ReadResourceResult:
        return await read_resource(self._service.mounts(caller), uri, grant=caller.grant)
