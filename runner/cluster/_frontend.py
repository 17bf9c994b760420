"""The cluster's front end: an `McpBackend` that routes every call to the node holding its
session, places new sessions, and answers for calls lost with their node.

Each node hosts a `SandgateNode` actor, named for the node so every front end finds the same
one (detached: it outlives the front end that made it, so another front end keeps serving its
sessions when one dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from policies import Gate, ToolCall
from policies._audit import iso_time

from .._errors import ServerLimit
from .._service import AskHuman, Caller, listed_tools, served_tool_names
from ..serving._server import protocol_error
from ..tools import ToolSet
from ._caps import forks_over_cap, refusal, sessions_over_cap
from ._inflight import InflightCalls, Pending
from ._metrics import ClusterMetrics
from ._node import Answer, NodeSpec, Recovered, Refusal, SandgateNode
from ._placement import NodeLoad, choose_node
from ._routes import ROUTE_SLACK_S, AtCap, SessionTable

logger = logging.getLogger("sandgate.cluster")

NAMESPACE = "sandgate"
ACTOR_PREFIX = "sandgate-node-"
NODES_EVERY_S = 2.0
"""How often the front end looks for nodes that joined or left."""
READY_TIMEOUT_S = 120.0
"""How long a node's actor may take to open its service."""
LOAD_TIMEOUT_S = 10.0
"""How long placement waits for a node's load figures."""


@dataclass(slots=True)
class _Node:
    node: str
    actor_id: str
    handle: Any

    @property
    def where(self) -> str:
        """The session table's value for this actor: node id and actor id."""
        return f"{self.node}@{self.actor_id}"


class NoNode(Exception):
    """No live node can take the session."""


class ClusterService:
    """Serves MCP from the nodes of a Ray cluster (an `McpBackend`).

    Args:
        ray: The `ray` module, already connected (`ray.init`).
        gate: The front end's own gate over the same policy and stores (tokens, tools/list,
            and settling calls lost with their node); it decides no call (the nodes do).
        spec: How each node opens its service.
        tool_sets: Which tool sets are served.
        say: Gets a line for each event worth telling (a node joined or was lost).
    """

    def __init__(
        self,
        *,
        ray: Any,
        gate: Gate,
        spec: NodeSpec,
        tool_sets: tuple[ToolSet, ...],
        say: Callable[[str], None],
    ) -> None:
        self._ray = ray
        self.gate = gate
        self._spec = spec
        self._names = served_tool_names(tool_sets)
        self._say = say
        self._table = SessionTable(spec.redis_url)
        self._inflight = InflightCalls(spec.redis_url)
        self._nodes: dict[str, _Node] = {}
        self._lost: set[str] = set()
        self._refreshing = asyncio.Lock()
        self._placing = asyncio.Lock()
        self._errors = importlib.import_module("ray.exceptions")
        self._remote = ray.remote(SandgateNode)
        self.metrics = ClusterMetrics()

    # -- the cluster ---------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        """Node ids with a live actor, as this front end knows them."""
        return sorted(self._nodes)

    def _live_node_ids(self) -> set[str]:
        return {
            n["NodeID"]
            for n in self._ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0
        }

    def _actor_for(self, node: str) -> Any:
        strategies = importlib.import_module("ray.util.scheduling_strategies")
        return self._remote.options(
            name=ACTOR_PREFIX + node,
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=1000,
            scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(self._spec, node)

    async def refresh(self) -> None:
        """Find or create the actor of every live node; forget those of nodes gone."""
        async with self._refreshing:
            live = await asyncio.to_thread(self._live_node_ids)
            for node in [n for n in self._nodes if n not in live]:
                self._drop(node, "its Ray node is no longer alive")
            joined = sorted(live - set(self._nodes))
            handles = {node: self._actor_for(node) for node in joined}
            for node, handle in handles.items():
                try:
                    await asyncio.wait_for(handle.ready.remote(), READY_TIMEOUT_S)
                except (TimeoutError, self._errors.RayError) as exc:
                    logger.warning("the actor of Ray node %s is not ready: %s", node, exc)
                    continue
                actor_id = handle._actor_id.hex()
                self._nodes[node] = _Node(node, actor_id, handle)
                self._say(f"sandgate: Ray node {node[:12]} serves (actor {actor_id[:12]})")
            self.metrics.nodes.set(len(self._nodes))

    async def watch(self) -> None:
        """Look at the cluster every `NODES_EVERY_S` until cancelled."""
        while True:
            await asyncio.sleep(NODES_EVERY_S)
            try:
                await self.refresh()
            except Exception:  # a failed look must not end the watching
                logger.exception("could not look at the Ray cluster")

    def _drop(self, node: str, why: str) -> None:
        gone = self._nodes.pop(node, None)
        if gone is not None:
            self._lost.add(gone.where)
            self.metrics.node_losses.inc()
            self.metrics.nodes.set(len(self._nodes))
            self._say(f"sandgate: Ray node {node[:12]} lost ({why})")

    def _by_where(self, where: str) -> _Node | None:
        node = self._nodes.get(where.split("@", 1)[0])
        return node if node is not None and node.where == where else None

    async def _loads(self) -> list[NodeLoad]:
        """Each live node's slots and runs (from its actor) and the sessions placed on it
        (from the session table, which counts those placed but not yet used)."""
        nodes = list(self._nodes.values())
        answers = await asyncio.gather(
            *(asyncio.wait_for(n.handle.load.remote(), LOAD_TIMEOUT_S) for n in nodes),
            return_exceptions=True,
        )
        loads: list[NodeLoad] = []
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, NodeLoad):
                placed = await asyncio.to_thread(self._table.placed, node.where)
                loads.append(replace(answer, sessions=placed))
        return loads

    def _route_ttl_s(self) -> float:
        """How long a session's table entry outlives its last use: the nodes' idle end and
        some slack (so the entry never points nowhere while the session lives)."""
        return self.gate.policy.server.session_idle_s + ROUTE_SLACK_S

    async def _route(self, grant: str, session: str) -> tuple[_Node, str | None]:
        """The node holding the session (placing it if new); and the node it was lost with,
        when it had to be placed again.

        Raises:
            NoNode: no live node can take it.
            AtCap: it is new and its grant holds `server.max_sessions_per_grant` sessions in
                the cluster (nothing placed).
        """
        ttl_s = self._route_ttl_s()
        where = await asyncio.to_thread(self._table.use, grant, session, ttl_s=ttl_s)
        if where is not None and (held := self._by_where(where)) is not None:
            return held, None
        if where is not None and where not in self._lost:
            await self.refresh()  # another front end's node we have not met yet?
            if (held := self._by_where(where)) is not None:
                return held, None
        if not self._nodes:
            await self.refresh()
        async with self._placing:  # this front end's new sessions see each other's placement
            chosen = choose_node(grant, await self._loads())
            if chosen is None or chosen not in self._nodes:
                raise NoNode(grant)
            target = self._nodes[chosen].where
            lost = None
            if where is None:
                now = await asyncio.to_thread(
                    functools.partial(
                        self._table.place,
                        grant,
                        session,
                        target,
                        ttl_s=ttl_s,
                        cap=self.gate.policy.server.max_sessions_per_grant,
                    )
                )
            else:
                moved, now = await asyncio.to_thread(
                    self._table.move, grant, session, lost=where, to=target, ttl_s=ttl_s
                )
                lost = where.split("@", 1)[0] if moved else None
            if now == target:
                self.metrics.placed.labels(chosen).inc()
        found = self._by_where(now)
        if found is None:
            await self.refresh()
            found = self._by_where(now)
            if found is None:
                raise NoNode(grant)
        return found, lost

    # -- McpBackend ----------------------------------------------------------------------

    def tool_names(self) -> list[str]:
        return self.gate.visible_tools(self._names)

    def list_tools(self, grant: str) -> list[types.Tool]:
        return listed_tools(self.gate, self._names, grant)

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None, caller: Caller
    ) -> types.CallToolResult:
        session = _routing_session(arguments, caller)
        try:
            node, lost = await self._route(caller.grant, session)
        except NoNode:
            return _error(_no_node_text(self.nodes))
        except AtCap as full:
            return await self._refuse(
                name, arguments, caller, sessions_over_cap(self.gate, full.held)
            )
        if name == "fork_session":  # the node counts only the sessions it holds itself
            held = await asyncio.to_thread(self._table.held, caller.grant)
            if (over := forks_over_cap(self.gate, arguments, held)) is not None:
                return await self._refuse(name, arguments, caller, over)
        note = None if lost is None else await self._recover(node, caller.grant, session, lost)
        self.metrics.routed.labels(node.node).inc()
        # The back-channel approver stays here: the node says what to ask (as for a client
        # that takes input requests), the human is asked over this connection, and the
        # answer goes to the node with the call again, through the gate's checks.
        approver = caller.approver
        remote = replace(
            caller, approver=None, can_ask_input=caller.can_ask_input or bool(approver)
        )
        answer, result = await self._send(node, name, arguments, remote)
        if answer is not None and answer.ask is not None and approver is not None:
            said = await approver(answer.ask)
            again = replace(caller, approver=None, can_ask_input=False)
            if said is not None:
                again = replace(again, answer=(answer.ask.approval_id, said))
            answer, result = await self._send(node, name, arguments, again)
        if answer is None:
            assert result is not None
            return result
        if answer.ask is not None:
            raise AskHuman(answer.ask)
        assert answer.result is not None
        if name == "fork_session" and not answer.result.is_error:
            await self._place_forks(caller.grant, node, answer.result)
        if note is None:
            return answer.result
        told = types.TextContent(type="text", text=note)
        return answer.result.model_copy(update={"content": [told, *answer.result.content]})

    async def _refuse(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        caller: Caller,
        limit: ServerLimit,
    ) -> types.CallToolResult:
        """Answer a call over a cap the cluster keeps as a single server does (audited)."""
        call, outcome, result = refusal(
            self.gate, self._names, self.tool_names(), name, arguments, caller, limit
        )
        await asyncio.to_thread(self.gate.refuse, call, rule=outcome.rule, reason=outcome.reason)
        return result

    async def _recover(self, node: _Node, grant: str, session: str, lost: str) -> str:
        """Make a session lost with node `lost` again on `node` from its last snapshot (the
        store every node shares); what to tell the client about it."""
        try:
            found: Recovered | None = await node.handle.recover.remote(grant, session)
        except self._lost_errors() as exc:
            self._drop(node.node, type(exc).__name__)
            found = Recovered("", 0.0, error=f"node {node.node[:12]} was lost too")
        except self._errors.RayError as exc:
            logger.error("recovering session %s of %s failed: %s", session, grant, exc)
            found = Recovered("", 0.0, error=f"the restore failed ({type(exc).__name__})")
        if found is None or found.error:
            self.metrics.recovered.labels("lost").inc()
            return _lost_session_text(lost, node.node, found)
        self.metrics.recovered.labels("snapshot").inc()
        return _restored_session_text(lost, node.node, found)

    async def _place_forks(self, grant: str, node: _Node, result: types.CallToolResult) -> None:
        """A fork made its sessions on the node that served it: route them there."""
        names = (result.structured_content or {}).get("sessions")
        if not isinstance(names, list):
            return
        ttl_s = self._route_ttl_s()
        for name in names:
            await asyncio.to_thread(
                self._table.place, grant, f"named:{name}", node.where, ttl_s=ttl_s
            )

    async def render_metrics(self) -> bytes:
        """This front end's metrics and every live node's, each labelled with its node."""
        nodes = list(self._nodes.values())
        answers = await asyncio.gather(
            *(asyncio.wait_for(n.handle.metrics.remote(), LOAD_TIMEOUT_S) for n in nodes),
            return_exceptions=True,
        )
        texts = {n.node: a for n, a in zip(nodes, answers, strict=True) if isinstance(a, bytes)}
        self.metrics.unanswered.set(len(nodes) - len(texts))
        return self.metrics.render(texts)

    async def _send(
        self, node: _Node, name: str, arguments: Mapping[str, Any] | None, caller: Caller
    ) -> tuple[Answer | None, types.CallToolResult | None]:
        """One call on `node`: its answer, or (the node was lost) the infra error to send."""
        call_id = uuid.uuid4().hex
        ref = node.handle.call_tool.remote(name, arguments, caller, call_id)
        try:
            answer: Answer = await ref
        except asyncio.CancelledError:
            self._ray.cancel(ref)
            raise
        except self._lost_errors() as exc:
            self._drop(node.node, type(exc).__name__)
            return None, await self._lost_call(node, call_id, exc)
        return answer, None

    def _lost_errors(self) -> tuple[type[BaseException], ...]:
        errors = self._errors
        return (
            errors.RayActorError,
            errors.WorkerCrashedError,
            errors.NodeDiedError,
            errors.ObjectLostError,
        )

    async def _lost_call(
        self, node: _Node, call_id: str, exc: BaseException
    ) -> types.CallToolResult:
        """Roll back and audit what the lost call had reserved; answer it as an infra error."""
        self.metrics.infra_errors.inc()
        pending = await asyncio.to_thread(self._inflight.take, call_id)
        for item in pending:
            await asyncio.to_thread(self._undo, item, node, exc)
        return _error(
            f"Error: Ray node {node.node[:12]} was lost while it ran this call "
            f"({type(exc).__name__}). The call was not run again and nothing was counted "
            "against your limits; this session's interpreter and files were lost with the "
            "node, so your next call starts a fresh session on another node."
        )

    def _undo(self, item: Pending, node: _Node, exc: BaseException) -> None:
        error = f"Ray node {node.node} lost ({type(exc).__name__}); not run again"
        call = ToolCall(tool=item.tool, args={}, grant=item.grant, session=item.session)
        self.gate.abandon(item.decision_id, item.reservation, call, engine=item.engine, error=error)

    async def _on_node(self, caller: Caller, method: str, *args: Any) -> Any:
        try:
            node, lost = await self._route(caller.grant, caller.session)
        except NoNode:
            raise MCPError(-32000, _no_node_text(self.nodes)) from None
        except AtCap as full:
            raise protocol_error(sessions_over_cap(self.gate, full.held)) from None
        if lost is not None:  # moved here now: restore it before anything reads it
            await self._recover(node, caller.grant, caller.session, lost)
        try:
            found = await getattr(node.handle, method).remote(replace(caller, approver=None), *args)
        except self._lost_errors() as exc:
            self._drop(node.node, type(exc).__name__)
            raise MCPError(-32000, f"Ray node {node.node[:12]} was lost; try again") from None
        if isinstance(found, Refusal):
            raise MCPError(found.code, found.message, found.data)
        return found

    async def list_resources(self, caller: Caller) -> list[types.Resource]:
        found: list[types.Resource] = await self._on_node(caller, "list_resources")
        return found

    async def resource_templates(self, caller: Caller) -> list[types.ResourceTemplate]:
        found: list[types.ResourceTemplate] = await self._on_node(caller, "resource_templates")
        return found

    async def read_resource(self, caller: Caller, uri: str) -> types.ReadResourceResult:
        found: types.ReadResourceResult = await self._on_node(caller, "read_resource", uri)
        return found

    async def end_session(self, grant: str, session_id: str) -> bool:
        """End a session wherever it lives; False when it was on no live node."""
        where = await asyncio.to_thread(self._table.node_of, grant, session_id)
        await asyncio.to_thread(self._table.forget, grant, session_id)
        node = None if where is None else self._by_where(where)
        if node is None:
            return False
        with contextlib.suppress(*self._lost_errors()):
            ended: bool = await node.handle.end_session.remote(grant, session_id)
            return ended
        return False

    def close(self) -> None:
        """Release the front end's Redis connections (the node actors stay for others)."""
        self._table.close()
        self._inflight.close()


def _routing_session(arguments: Mapping[str, Any] | None, caller: Caller) -> str:
    """The session a call is routed by: a named session (`session` argument) has its own."""
    named = (arguments or {}).get("session")
    if isinstance(named, str) and named:
        return f"named:{named}"
    return caller.session


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def _no_node_text(nodes: list[str]) -> str:
    return (
        f"Error: no Ray node can take a new session now ({len(nodes)} node(s) serving). "
        "Retry shortly; an operator adds capacity with `ray start --address=…` on another "
        "machine. Nothing was counted against your limits."
    )


def _lost_session_text(lost: str, now: str, found: Recovered | None) -> str:
    if found is None:
        why = "it has no snapshot"
    elif found.snapshot_id:
        why = f"its last snapshot {found.snapshot_id} could not be restored: {found.error}"
    else:
        why = f"it could not be restored: {found.error}"
    return (
        f"sandgate: this session's interpreter and files were lost with Ray node {lost[:12]}; "
        f"a fresh session started on node {now[:12]} ({why}; variables and files from before "
        "are gone: run again what the code needs)."
    )


def _restored_session_text(lost: str, now: str, found: Recovered) -> str:
    taken = iso_time(found.taken_at)
    text = (
        f"sandgate: this session was lost with Ray node {lost[:12]} and restored on node "
        f"{now[:12]} from snapshot {found.snapshot_id} taken at {taken}: its files and "
        "packages as they were then"
    )
    if found.interpreters:
        text += f", and the interpreter variables of {', '.join(found.interpreters)}"
    else:
        text += " (the snapshot held no interpreter: variables are gone)"
    for key, why in found.not_restored.items():
        text += f"; the {key} interpreter was not restored ({why})"
    return text + ". Anything done after the snapshot is gone."
