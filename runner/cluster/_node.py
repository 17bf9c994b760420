"""The body of the Ray actor each node hosts: a full `Service` serving the sessions placed here.

Answers are plain data (a tool result, an approval to ask for, an MCP error's code, message
and data), so nothing of the node's own exception types has to cross the wire.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types

from policies import NeedsApproval
from sandboxes import SandboxError

from .._app import Config, open_service
from .._errors import RunnerError
from .._service import AskHuman, Caller, Service
from ..serving._backend import LocalBackend
from ..serving._server import protocol_error
from ._inflight import InflightCalls, TrackedGate
from ._placement import NodeLoad

logger = logging.getLogger("sandgate.cluster.node")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """How every node opens its service (what the front end was started with).

    Attributes:
        policy_path: The policy file (the same path on every node).
        state_dir: The state folder; each node keeps its own under `nodes/<node id>`.
        redis_url: The policy's Redis (`state.url`): counters, approvals, calls in flight.
        workers: WASM worker processes on the node.
        tool_sets: Which tool sets are served.
        snapshots_dir: The snapshot store every node shares (a folder all of them see).
    """

    policy_path: str | None
    state_dir: str
    redis_url: str
    workers: int
    tool_sets: tuple[str, ...]
    snapshots_dir: str


@dataclass(frozen=True, slots=True)
class Recovered:
    """A session lost with its node, made again here from its last snapshot.

    Attributes:
        snapshot_id: The snapshot restored.
        taken_at: When it was taken (Unix time).
        interpreters: Engines whose saved interpreter (its variables) came back too.
        not_restored: Engines whose interpreter could not be restored, with why.
        error: Why nothing could be restored ("" when it was).
    """

    snapshot_id: str
    taken_at: float
    interpreters: tuple[str, ...] = ()
    not_restored: Mapping[str, str] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a node answers a call: a result, or the approval a human must give first."""

    result: types.CallToolResult | None = None
    ask: NeedsApproval | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A resources request refused: the JSON-RPC error to send."""

    code: int
    message: str
    data: Any = None


class SandgateNode:
    """Hosts one node's service (opened on first use) for the cluster's front ends.

    Args:
        spec: How to open the service.
        node: This node's Ray id.
    """

    def __init__(self, spec: NodeSpec, node: str) -> None:
        self._spec = spec
        self._node = node
        self._lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._service: Service | None = None
        self._inflight = InflightCalls(spec.redis_url)

    async def _open(self) -> Service:
        async with self._lock:
            if self._service is None:
                spec = self._spec
                config = Config(
                    policy_path=Path(spec.policy_path) if spec.policy_path else None,
                    state_dir=Path(spec.state_dir) / "nodes" / self._node[:16],
                    workers=spec.workers,
                    tool_sets=spec.tool_sets,  # type: ignore[arg-type]
                    progress=logger.info,
                    snapshots_dir=Path(spec.snapshots_dir),
                )
                stack = AsyncExitStack()
                self._service = await stack.enter_async_context(
                    open_service(config, gate_type=TrackedGate)
                )
                self._stack = stack
            return self._service

    async def ready(self) -> dict[str, Any]:
        """Open the service (the engines start meanwhile); this node's id and process."""
        await self._open()
        return {"node": self._node, "pid": os.getpid()}

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None, caller: Caller, call_id: str
    ) -> Answer:
        """Serve one call; every allowed decision of it stays in Redis until settled."""
        service = await self._open()
        with self._inflight.tracking(call_id):
            try:
                return Answer(result=await service.call_tool(name, arguments, caller))
            except AskHuman as ask:
                return Answer(ask=ask.need)

    async def recover(self, grant: str, session_id: str) -> Recovered | None:
        """Make a session lost with another node again here from its last snapshot in the
        shared store: its files, packages and saved interpreters; `None` when it has none."""
        service = await self._open()
        store = service.snapshots.store
        info = await asyncio.to_thread(store.last_of, grant, session_id)
        if info is None:
            return None
        try:
            _info, folder = store.get(grant, info.id)
            session = service.sessions.get(grant, session_id)
            restored = await service.snapshots.restore(info, folder, session)
        except (RunnerError, SandboxError, OSError) as exc:
            logger.warning("session %s not restored from %s: %s", session_id, info.id, exc)
            return Recovered(info.id, info.created_at, error=str(exc))
        return Recovered(
            info.id, info.created_at, restored.interpreters, dict(restored.not_restored)
        )

    async def metrics(self) -> bytes:
        """This node's Prometheus metrics, in the text format."""
        return (await self._open()).metrics.render()

    async def list_resources(self, caller: Caller) -> list[types.Resource] | Refusal:
        backend = LocalBackend(await self._open())
        try:
            return await backend.list_resources(caller)
        except (RunnerError, SandboxError) as exc:
            return _refusal(exc)

    async def resource_templates(self, caller: Caller) -> list[types.ResourceTemplate] | Refusal:
        backend = LocalBackend(await self._open())
        try:
            return await backend.resource_templates(caller)
        except (RunnerError, SandboxError) as exc:
            return _refusal(exc)

    async def read_resource(self, caller: Caller, uri: str) -> types.ReadResourceResult | Refusal:
        backend = LocalBackend(await self._open())
        try:
            return await backend.read_resource(caller, uri)
        except (RunnerError, SandboxError) as exc:
            return _refusal(exc, uri=uri)

    async def end_session(self, grant: str, session_id: str) -> bool:
        """End a session held here (its workspace, its interpreters)."""
        return await (await self._open()).end_session(grant, session_id)

    async def load(self) -> NodeLoad:
        """Run slots, runs in flight and sessions held per grant, for placement."""
        service = await self._open()
        held = Counter(s.grant for s in service.sessions.listing())
        admission = service.admission
        return NodeLoad(
            node=self._node,
            slots=admission.slots,
            running=admission.slots - admission.free,
            sessions=dict(held),
        )

    async def close(self) -> None:
        """Close the service (engines, sessions, state store)."""
        async with self._lock:
            if self._stack is not None:
                await self._stack.aclose()
            self._stack = None
            self._service = None
        self._inflight.close()


def _refusal(exc: RunnerError | SandboxError, *, uri: str = "") -> Refusal:
    error = protocol_error(exc, uri=uri)
    return Refusal(error.code, error.message, error.data)
