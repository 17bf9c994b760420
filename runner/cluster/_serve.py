"""`sandgate serve --ray ADDRESS`: a thin MCP front end over the node actors of a Ray cluster."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from pathlib import Path
from typing import Any, Literal

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policies import (
    AUDIT_FILE,
    Gate,
    Policy,
    PolicyError,
    default_policy_path,
    load_policy,
    open_audit_sink,
    open_counter_store,
)

from .._app import Config
from .._errors import SetupError
from ..console import is_loopback
from ..serving._cancelled import SilentCancels
from ..serving._server import build_server, connection_scope
from ..serving._shared_sessions import SharedGrantSessions
from ..serving._stdio import stdio_streams
from ..serving._transports import BearerGrants, session_table
from ._frontend import NAMESPACE, ClusterService
from ._node import NodeSpec

logger = logging.getLogger("sandgate.cluster")

CONNECT_HELP = (
    "start a cluster with `ray start --head --port=6379` (and `ray start --address=HEAD:6379` "
    "on every other machine), then pass --ray HEAD:6379"
)


PROBE_TIMEOUT_S = 5.0
"""How long the front end waits for the Ray head's port to answer before it gives up."""


class ClusterUnavailable(SetupError):
    """The Ray cluster cannot be reached, or Ray is not installed."""


def connect(address: str) -> Any:
    """`ray`, connected to the cluster at `address` in the `sandgate` namespace.

    Raises:
        ClusterUnavailable: Ray is not installed, or nothing answers at `address`.
    """
    try:
        ray = importlib.import_module("ray")
    except ImportError as exc:
        raise ClusterUnavailable(
            "--ray was given but the `ray` package is not installed: pip install "
            "'sandgate[batch]' (or `pip install ray`) on the front end and every node"
        ) from exc
    _probe(address)
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnavailable(
            f"--ray {address}: no Ray cluster answers there ({exc}); {CONNECT_HELP}"
        ) from exc
    return ray


def _probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail at once when nothing listens at a `host:port` address (Ray itself keeps retrying
    for minutes); `auto` and `ray://` addresses are left to Ray."""
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except OSError as exc:
        raise ClusterUnavailable(
            f"--ray {address}: nothing listens there ({exc.strerror or exc}); {CONNECT_HELP}"
        ) from exc


def _metrics_endpoint(cluster: ClusterService) -> Any:
    async def endpoint(request: Request) -> Response:
        return Response(await cluster.render_metrics(), media_type=CONTENT_TYPE_LATEST)

    return endpoint


def cluster_policy(
    config: Config, transport: Literal["stdio", "streamable-http"]
) -> tuple[Path, Policy]:
    """The policy, checked for what a cluster needs: its state in Redis (and over HTTP, its
    MCP sessions).

    Raises:
        SetupError: it does not load, its `state.backend` is not `redis`, or (HTTP) its
            `server.http_sessions` is not `redis`.
    """
    path = config.policy_path or default_policy_path()
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        raise SetupError(f"cannot load the policy {path}: {exc}") from exc
    if policy.state.backend != "redis" or policy.state.url is None:
        raise SetupError(
            f"--ray needs the policy's counters, approvals and session table in Redis, which "
            f"every front end and node reaches; {path} has state.backend "
            f"{policy.state.backend!r}. Add to it:\n  state:\n    backend: redis\n"
            "    url: redis://HOST:6379/0\n  audit:\n    sink: redis"
        )
    if transport == "streamable-http" and policy.server.http_sessions != "redis":
        raise SetupError(
            f"--ray over streamable HTTP needs the MCP sessions in Redis, so that every front "
            f"end accepts a session another one opened; {path} has server.http_sessions "
            f"{policy.server.http_sessions!r}. Add to it:\n  server:\n    http_sessions: redis"
        )
    return Path(path), policy


async def serve_cluster(
    config: Config,
    *,
    address: str,
    transport: Literal["stdio", "streamable-http"],
    host: str = "127.0.0.1",
    port: int = 8765,
    path: str = "/mcp",
) -> None:
    """Serve MCP from the Ray cluster at `address` until stopped.

    Raises:
        SetupError: the policy is not fit for a cluster, the cluster cannot be reached, or
            no node's actor becomes ready.
    """
    policy_path, policy = cluster_policy(config, transport)
    if policy.server.console is not None:
        config.progress(
            f"sandgate: {policy_path} sets server.console, but the operator console is not "
            "served with --ray yet (this front end has no /console). Run `sandgate serve` "
            "without --ray against the same Redis for the console, or remove server.console"
        )
    ray = connect(address)  # in the loop's thread: Ray sets up signal handling there
    url = policy.state.url
    assert url is not None
    try:
        store = open_counter_store(policy.state, default_dir=config.state_dir)
        audit = open_audit_sink(
            policy.audit, state_url=url, default_path=config.state_dir / AUDIT_FILE
        )
    except PolicyError as exc:
        raise SetupError(f"cannot open the policy's state or audit: {exc}") from exc
    gate = Gate(policy, store, audit, policy_path=policy_path)
    spec = NodeSpec(
        policy_path=str(policy_path.resolve()),
        state_dir=str(config.state_dir.resolve()),
        redis_url=url,
        workers=config.workers,
        tool_sets=tuple(config.tool_sets),
        snapshots_dir=str((config.snapshots_dir or config.state_dir / "snapshots").resolve()),
    )
    cluster = ClusterService(
        ray=ray,
        gate=gate,
        spec=spec,
        tool_sets=config.tool_sets,
        say=config.progress,
    )
    watching: asyncio.Task[None] | None = None
    stack = contextlib.AsyncExitStack()
    try:
        await cluster.refresh()
        if not cluster.nodes:
            raise SetupError(
                f"no node of the Ray cluster at {address} could host sandgate (none alive with "
                f"CPUs, or their actors did not start: see the Ray logs); {CONNECT_HELP}"
            )
        watching = asyncio.create_task(cluster.watch())
        server = build_server(cluster)
        if transport == "stdio":
            async with stdio_streams() as (read_stream, write_stream):
                with connection_scope():
                    await server.run(
                        read_stream, write_stream, server.create_initialization_options()
                    )
            return
        limits = policy.server
        app: Any = server.streamable_http_app(
            streamable_http_path=path,
            host=host,
            custom_starlette_routes=[Route("/metrics", endpoint=_metrics_endpoint(cluster))],
            max_request_body_size=limits.max_request_bytes,
            stateless_http=True,
        )
        table = session_table(policy)
        assert table is not None  # cluster_policy refused anything but `redis`
        stack.push_async_callback(table.aclose)
        app = SharedGrantSessions(
            app,
            table=table,
            end_session=cluster.end_session,
            limits=lambda: (
                gate.policy.server.max_sessions_per_grant,
                gate.policy.server.session_idle_s,
            ),
            path=path,
            max_body_bytes=limits.max_request_bytes,
        )
        app = BearerGrants(SilentCancels(app), gate, loopback=is_loopback(host))
        uv = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        )
        config.progress(
            f"sandgate: serving streamable HTTP on http://{host}:{port}{path} from "
            f"{len(cluster.nodes)} Ray node(s) at {address}"
        )
        await uv.serve()
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(BaseException):
                await watching
        await stack.aclose()
        cluster.close()
        store.close()
        audit.close()
        ray.shutdown()
