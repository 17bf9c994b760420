"""Serve the MCP server over stdio or streamable HTTP (with bearer-token grants)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from policies import Gate, Policy

from .._app import Config, open_service
from .._errors import SetupError
from .._metrics import Metrics
from .._service import Service
from ..console import PREFIX, Console, is_loopback
from ._cancelled import SilentCancels
from ._http_sessions import GrantSessions
from ._server import GRANT_SCOPE_KEY, build_server, connection_scope
from ._session_table import RedisSessionTable
from ._shared_sessions import SharedGrantSessions
from ._stdio import stdio_streams

logger = logging.getLogger("sandgate.transports")

ANONYMOUS_GRANT = "anonymous"
WELL_KNOWN = "/.well-known/"
"""OAuth discovery lives here (RFC 8414, RFC 9728); a server of static bearer tokens has none."""


async def serve_stdio(config: Config) -> None:
    """Serve on this process's stdin/stdout until the client closes it. The grant is `local`."""
    async with open_service(config) as service:
        server = build_server(service)
        async with stdio_streams() as (read_stream, write_stream):
            with connection_scope():
                await server.run(read_stream, write_stream, server.create_initialization_options())


class BearerGrants:
    """ASGI middleware: maps `Authorization: Bearer TOKEN` to a policy grant, else answers 401.

    With no grants in the policy, callers are the `anonymous` grant, and only when the server
    listens on a loopback address; anywhere else a policy without grants refuses everyone.
    The request's `user` is the grant, so the SDK binds each MCP session to the grant that
    opened it (another grant's session id answers 404, as an unknown one does).
    """

    def __init__(
        self, app: ASGIApp, gate: Gate, *, loopback: bool, own_auth: tuple[str, ...] = ()
    ) -> None:
        self._app = app
        self._gate = gate
        self._loopback = loopback
        self._own_auth = own_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if str(scope.get("path", "")).startswith(WELL_KNOWN):
            # No OAuth here: a 404 (not a 401) tells an OAuth-aware client there is no
            # authorization server to log in to, so it shows the server's own 401 message.
            await _no_oauth(send)
            return
        path = str(scope.get("path", ""))
        if any(path == p or path.startswith(p + "/") for p in self._own_auth):
            await self._app(scope, receive, send)  # the operator console checks its own
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        grant: str | None = None
        if auth.lower().startswith("bearer "):
            grant = self._gate.authenticate(auth[7:].strip())
        elif not self._gate.policy.grants and self._loopback:
            grant = ANONYMOUS_GRANT
        if grant is None:
            await _unauthorized(send, bool(auth))
            return
        scope[GRANT_SCOPE_KEY] = grant
        scope["user"] = AuthenticatedUser(AccessToken(token=grant, client_id=grant, scopes=[]))
        await self._app(scope, receive, send)


async def _unauthorized(send: Send, had_token: bool) -> None:
    """401 with the reason, in the body and (RFC 6750) in `WWW-Authenticate`, which names no
    `resource_metadata`: the tokens are static, set by the operator, never obtained by OAuth."""
    if had_token:
        reason = "unknown bearer token"
        challenge = f'Bearer realm="sandgate", error="invalid_token", error_description="{reason}"'
    else:
        reason = "a bearer token is required (send the header Authorization: Bearer TOKEN)"
        challenge = 'Bearer realm="sandgate"'
    body = json.dumps({"error": "unauthorized", "detail": reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", challenge.encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _no_oauth(send: Send) -> None:
    detail = (
        "this server uses static bearer tokens, not OAuth: send the header "
        "'Authorization: Bearer TOKEN' with the token the operator gave you"
    )
    body = json.dumps({"error": "not_found", "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def _session_table(service: Service) -> AsyncIterator[RedisSessionTable | None]:
    table = session_table(service.gate.policy)
    try:
        yield table
    finally:
        if table is not None:
            await table.aclose()


def _metrics_endpoint(metrics: Metrics) -> Any:
    async def endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return endpoint


def session_table(policy: Policy) -> RedisSessionTable | None:
    """The Redis table of MCP HTTP sessions when `server.http_sessions` is `redis`, else None.

    Raises:
        SetupError: `redis` is asked and `state.url` names no Redis.
    """
    if policy.server.http_sessions != "redis":
        return None
    if not policy.state.url:
        raise SetupError(
            "server.http_sessions is 'redis' but state.url is not set; add state.url "
            "(e.g. redis://host:6379/0), or set server.http_sessions to memory"
        )
    return RedisSessionTable(policy.state.url)


def with_sessions(
    app: ASGIApp, service: Service, *, path: str, table: RedisSessionTable | None
) -> ASGIApp:
    """`app` (the SDK's streamable HTTP app, stateless with a `table`) behind the session
    middleware of the mode: `GrantSessions` in memory, `SharedGrantSessions` in Redis."""

    def limits() -> tuple[int, float]:
        server = service.gate.policy.server
        return server.max_sessions_per_grant, server.session_idle_s

    if table is None:
        return GrantSessions(app, end_session=service.end_session, limits=limits)
    return SharedGrantSessions(
        app,
        table=table,
        end_session=service.end_session,
        limits=limits,
        path=path,
        max_body_bytes=service.gate.policy.server.max_request_bytes,
    )


async def serve_http(config: Config, *, host: str, port: int, path: str = "/mcp") -> None:
    """Serve MCP's streamable HTTP transport on `host:port` at `path`."""
    async with open_service(config) as service, _session_table(service) as table:
        server = build_server(service)
        metrics = Route("/metrics", endpoint=_metrics_endpoint(service.metrics))
        console = Console(
            service.operator,
            lambda: service.gate.policy.server.console,
            service.gate.authenticate,
        )
        limits = service.gate.policy.server
        routes: list[Any] = [metrics, console.mount()]  # the SDK takes any Starlette route
        shared = limits.http_sessions == "redis"
        app: Any = server.streamable_http_app(
            streamable_http_path=path,
            host=host,
            custom_starlette_routes=routes,
            max_request_body_size=limits.max_request_bytes,
            stateless_http=shared,
            session_idle_timeout=None if shared else limits.session_idle_s,
        )
        app = with_sessions(app, service, path=path, table=table)
        app = BearerGrants(
            SilentCancels(app), service.gate, loopback=is_loopback(host), own_auth=(PREFIX,)
        )
        uv = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        )
        config.progress(f"sandgate: serving streamable HTTP on http://{host}:{port}{path}")
        if limits.console is not None:
            config.progress(f"sandgate: operator console on http://{host}:{port}{PREFIX}/")
        await uv.serve()
