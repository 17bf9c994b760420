"""The transport-independent core: validate a tool call, ask the gate, run the plan, and say
how it ended (a typed `Outcome`, worded for MCP by the tool's formatter)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mcp_types as types

from policies import (
    Allowed,
    ApprovalRefused,
    AuditUnavailable,
    Decision,
    Denied,
    Gate,
    NeedsApproval,
    StateUnavailable,
    ToolCall,
    UnknownApproval,
)
from sandboxes import (
    HOST_IO,
    CapabilityMissing,
    EngineBusy,
    ExecutionPlan,
    HostIOBusy,
    HostIOTimeout,
    Program,
    RunResult,
    SandboxError,
    shielded,
)
from sandboxes import session_key as key_of

from ._admission import Admission, Busy
from ._disk import settle_workspace
from ._egress import EgressLeases, with_network
from ._engines import Engines
from ._errors import ArgumentError, RunnerError, ServerLimit, UnknownTool
from ._metrics import Metrics
from ._mounts import MountPoint, session_mounts
from ._sessions import Session, Sessions
from .operator._api import OperatorApi
from .operator._usage import UsageWindow
from .operator._waiting import ApprovalRoom
from .packages import Installer
from .snapshots import SessionSnapshots, SnapshotStore
from .tools import TOOLS_BY_NAME, Caller, ToolSet
from .tools import Busy as BusyOutcome
from .tools._arguments import check_request_size, validate_arguments
from .tools._describe import Route
from .tools._fit import Shown, fit_image, fit_run, fits_whole, head_and_tail
from .tools._format import outcome_result
from .tools._outcome import Failed, Invalid, Outcome, Ran, Refused, Told
from .tools._registry import tool_of

logger = logging.getLogger("sandgate.service")

DEFAULT_RUN_SLOTS = 4
"""Runs admitted at once when the server does not say (it passes its engines' worker count)."""

__all__ = ["DEFAULT_RUN_SLOTS", "AskHuman", "Caller", "Service"]


@dataclass(slots=True)
class _Trace:
    """What one call went through, for the metrics; and whether a model reads its result
    (an MCP call: output and images are fitted to `server.result_*`; `sandgate batch` gets
    the run whole)."""

    decision: str = "refused"
    status: str = "none"
    engine: str = "none"
    for_model: bool = False
    busy: bool = False
    asked: bool = False


_TRACE: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar(
    "sandgate_trace", default=None
)


def _trace() -> _Trace:
    return _TRACE.get() or _Trace()


class AskHuman(Exception):
    """The call waits for a human: the server answers with an elicitation (input required)."""

    def __init__(self, need: NeedsApproval) -> None:
        super().__init__(need.reason)
        self.need = need


class _Ticket:
    """One decided call inside `Service.gated`; settled exactly once."""

    def __init__(self, service: Service, decision: Allowed | None, refused: Refused | None):
        self._service = service
        self._decision = decision
        self._refused = refused
        self.settled = refused is not None
        self._finishing: asyncio.Future[None] | None = None

    @property
    def refused(self) -> Refused | None:
        return self._refused

    @property
    def plan(self) -> ExecutionPlan | None:
        return None if self._decision is None else self._decision.plan

    @property
    def decision(self) -> Allowed | None:
        return self._decision

    def settle(
        self,
        status: str,
        *,
        error: str | None = None,
        outcome: str = "completed",
        usage: Mapping[str, Any] | None = None,
        egress_bytes: int = 0,
    ) -> None:
        """Record how the call ended: `completed` and `cancelled` commit its counters;
        `refused` and `infra_error` roll them back (nothing counted); bytes the run moved
        through the egress proxy are charged to the route's window quotas. Once only."""
        if self.settled or self._decision is None:
            return
        self.settled = True
        _trace().status = status
        details: dict[str, Any] = {"status": status, "usage": usage, "error": error}
        if egress_bytes:
            details["egress_bytes"] = egress_bytes
        self._finishing = self._service.finish(self._decision, outcome, **details)

    async def finished(self) -> None:
        """Wait until the settling is recorded, when it runs off the event loop (`finish`);
        to its end even when the call is cancelled meanwhile (then re-raised)."""
        if self._finishing is not None:
            await shielded(self._finishing)


class Service:
    """Serves the tools: one call = validate → gate → engine → outcome, every step accounted.

    Args:
        gate: The policy gate.
        engines: The engines, by key (`wasm`, `pyodide`, `container:runsc`, …).
        sessions: Session workspaces.
        installer: Installs packages from the mirror into session workspaces.
        tool_sets: Which tool sets are served.
        operator_mounts: Operator folders every engine shows at `/mnt/NAME`.
        snapshot_store: Where session snapshots live (default: `snapshots` beside the
            sessions' folder).
        egress_dir: The server's state folder, where the egress proxy keeps its CA and
            sockets (`egress/`; default: beside the sessions' folder).
    """

    def __init__(
        self,
        *,
        gate: Gate,
        engines: Engines,
        sessions: Sessions,
        installer: Installer,
        tool_sets: tuple[ToolSet, ...],
        metrics: Metrics | None = None,
        admission: Admission | None = None,
        operator_mounts: tuple[MountPoint, ...] = (),
        snapshot_store: SnapshotStore | None = None,
        egress_dir: Path | None = None,
    ) -> None:
        self.gate = gate
        self.admission = admission or Admission(DEFAULT_RUN_SLOTS)
        self.metrics = metrics or Metrics(self.pool_stats)
        self.engines = engines
        self.sessions = sessions
        self._installer = installer
        self._operator_mounts = operator_mounts
        self._names = served_tool_names(tool_sets)
        self._host_mounts = tuple(m.host_mount() for m in operator_mounts)
        store = snapshot_store or SnapshotStore(sessions.root.parent / "snapshots")
        self._snapshots = SessionSnapshots(store, sessions, engines, lambda: gate.policy.server)
        self.usage = UsageWindow()
        self.egress = EgressLeases(
            egress_dir or sessions.root.parent,
            lambda: gate.policy.server.egress,
            gate,
            self.metrics,
        )
        """The egress proxy, leased to each run whose plan says `egress`."""
        self.approvals = ApprovalRoom()
        self.operator = OperatorApi(self)
        """What an operator does (the console's API): approvals, audit, usage, policy."""

    @property
    def installer(self) -> Installer:
        return self._installer

    @property
    def operator_mounts(self) -> tuple[MountPoint, ...]:
        return self._operator_mounts

    @property
    def snapshots(self) -> SessionSnapshots:
        """Session snapshots: take, restore, fork, list, delete (the Python API; the
        snapshot tools call these behind the gate)."""
        return self._snapshots

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Each running engine's pool figures, for the metrics."""
        return {name: dict(e.pool_stats()) for name, e in self.engines.running().items()}

    def mounts(self, caller: Caller) -> list[MountPoint]:
        """The mount points `caller`'s session sees: its workspace and the operator's."""
        return session_mounts(self.session_of(caller).workspace.files, self._operator_mounts)

    async def end_session(self, grant: str, session_id: str) -> bool:
        """End a session: its workspace is removed and every engine told (a Pyodide
        interpreter is released). False when there was no such session."""
        session = await asyncio.to_thread(self.sessions.end, grant, session_id)
        await self.engines.end_session(key_of(grant, session_id))
        return session is not None

    async def end_named_session(self, grant: str, name: str) -> bool:
        """End the session `run_code(session=name)` made for `grant`."""
        return await self.end_session(grant, f"named:{name}")

    def tool_names(self) -> list[str]:
        """The tools this server lists (policy-hidden ones removed)."""
        return self.gate.visible_tools(self._names)

    def list_tools(self, grant: str) -> list[types.Tool]:
        """What tools/list shows `grant`: the tools it may call (and, when the policy says
        `server.list_denied_tools`, those it is refused; hidden ones never), each described
        for the route the policy has in force for it, its roles' quotas included
        (`runner/tools/_describe.py`)."""
        return listed_tools(self.gate, self._names, grant)

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None, caller: Caller
    ) -> types.CallToolResult:
        """Serve one call as MCP. Never raises for anything a client can send, except
        `AskHuman` (only for a caller with `can_ask_input`), which the server turns into an
        elicitation."""
        outcome, args = await self._traced(name, arguments, caller, for_model=True)
        spec = TOOLS_BY_NAME.get(name)
        if spec is None or (isinstance(outcome, Ran) and args is None):
            return outcome_result(outcome, structured=False)
        return spec.result(outcome, args)

    async def outcome(
        self, name: str, arguments: Mapping[str, Any] | None, caller: Caller
    ) -> Outcome:
        """Serve one call and say how it ended, as data (what `sandgate batch` reads)."""
        outcome, _args = await self._traced(name, arguments, caller)
        return outcome

    async def _traced(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        caller: Caller,
        *,
        for_model: bool = False,
    ) -> tuple[Outcome, Any]:
        trace = _Trace(for_model=for_model)
        token = _TRACE.set(trace)
        began = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            with self.sessions.hold():
                return await self._serve(name, arguments, caller)
        finally:
            self.metrics.in_flight.dec()
            _TRACE.reset(token)
            tool = name if name in TOOLS_BY_NAME else "unknown"
            self.metrics.calls.labels(tool, trace.decision, trace.status).inc()
            took = time.perf_counter() - began
            self.metrics.latency.labels(tool, trace.engine).observe(took)
            self.usage.record(
                grant=caller.grant,
                engine=trace.engine,
                decision=trace.decision,
                asked=trace.asked,
                busy=trace.busy,
                seconds=took,
            )

    async def _serve(
        self, name: str, arguments: Mapping[str, Any] | None, caller: Caller
    ) -> tuple[Outcome, Any]:
        try:
            check_request_size(arguments, self.gate.policy.server.max_request_bytes)
            if name not in self._names:
                raise UnknownTool(name, self.tool_names())
            spec = TOOLS_BY_NAME[name]
            args = validate_arguments(spec.arguments, arguments)
            outcome = await spec.handler(self, args, arguments or {}, caller)
            if isinstance(outcome, Told) and outcome.images and _trace().for_model:
                outcome = await self._fit_told(outcome, caller.grant)
            return outcome, args
        except (ArgumentError, UnknownTool, ServerLimit) as exc:
            rule = f"/arguments/{exc.argument}" if isinstance(exc, ArgumentError) else "/tools"
            if isinstance(exc, ServerLimit):
                rule = exc.rule
            safe_args = dict(arguments) if isinstance(arguments, Mapping) else {}
            refused = ToolCall(
                tool=name, args=safe_args, grant=caller.grant, session=caller.session
            )
            await asyncio.to_thread(self.gate.refuse, refused, rule=rule, reason=str(exc))
            return Invalid(rule, str(exc)), None
        except AskHuman:
            raise
        except Exception:  # the one tool boundary: log it, tell the client without internals
            logger.exception("internal error serving %s", name)
            return Failed(
                f"Error: sandgate failed to serve '{name}' (an internal error, logged on the "
                "server). Nothing was counted against your limits."
            ), None

    # -- the shared path -------------------------------------------------------------------

    def session_of(self, caller: Caller, named: str | None = None) -> Session:
        """The caller's session (or the named one of its grant), made on first use."""
        session_id = caller.session if named is None else f"named:{named}"
        return self.sessions.get(caller.grant, session_id)

    def has_session(self, caller: Caller, named: str) -> bool:
        """Whether the caller's grant holds the run_code session `named`."""
        return self.sessions.exists(caller.grant, f"named:{named}")

    async def decide(self, call: ToolCall, caller: Caller) -> Allowed | Denied:
        """Ask the gate (and a human, when the policy wants one) about `call`.

        A client's answer sent with the call is taken first, through the gate, which refuses
        it (a `Denied`, nothing changed) unless the policy lets clients answer, the client
        declared elicitation, and the approval is its own for exactly this call. A client is
        asked (elicitation) only when the policy lets clients answer and it can elicit.
        """
        if caller.answer is not None:
            refused = await self._answer(call, caller, *caller.answer)
            if refused is not None:
                return refused
        began = time.perf_counter()
        decision = self.gate.try_decide(call)  # in place when it waits on nothing
        if decision is None:
            decision = await asyncio.to_thread(self.gate.decide, call)
        self.metrics.gate_latency.observe(time.perf_counter() - began)
        if isinstance(decision, NeedsApproval):
            _trace().decision = "needs_approval"
            self.approvals.asked(decision, call)
            _trace().asked = True
            ask = decision.by == "client" and caller.elicitation
            answer = await caller.approver(decision) if ask and caller.approver else None
            if answer is None and ask and caller.can_ask_input and caller.answer is None:
                raise AskHuman(decision)
            if answer is not None:
                refused = await self._answer(call, caller, decision.approval_id, answer)
                if refused is not None:
                    return refused
                decision = await asyncio.to_thread(self.gate.decide, call)
            elif isinstance(decision, NeedsApproval):
                decision = await self._hold_for_operator(call, decision)
            if isinstance(decision, NeedsApproval):
                return Denied(decision.decision_id, decision.rule, decision.reason)
        _trace().decision = "deny" if isinstance(decision, Denied) else "allow"
        return decision

    async def _hold_for_operator(self, call: ToolCall, need: NeedsApproval) -> Decision:
        """With the console on, hold the call (`server.console.hold_approvals_s`) until an
        operator answers its approval, then decide it again; `need` if nobody answered."""
        console = self.gate.policy.server.console
        hold = 0.0 if console is None else console.hold_approvals_s
        hold = min(hold, need.expires_at - time.time())
        if hold <= 0:
            return need

        async def answered() -> bool:
            try:
                status = await asyncio.to_thread(self.gate.approval_status, need.approval_id)
            except (UnknownApproval, StateUnavailable):
                return True  # deciding again says what became of it
            return status != "pending"

        if not await self.approvals.wait(need.approval_id, hold, answered):
            return need
        decision = await asyncio.to_thread(self.gate.decide, call)
        note = self.approvals.note(need.approval_id)
        if isinstance(decision, Denied) and note:
            decision = replace(decision, reason=f"{decision.reason} The operator said: {note}")
        return decision

    async def _answer(
        self, call: ToolCall, caller: Caller, approval_id: str, approved: bool
    ) -> Denied | None:
        """Give the gate the client's answer; a `Denied` when it was refused (audited)."""
        try:
            await asyncio.to_thread(
                self.gate.answer_approval,
                call,
                approval_id,
                approved,
                elicitation=caller.elicitation,
            )
        except ApprovalRefused as exc:
            _trace().decision = "deny"
            return Denied(exc.decision_id, exc.rule, str(exc))
        except (StateUnavailable, AuditUnavailable) as exc:
            _trace().decision = "deny"
            rule = "/state" if isinstance(exc, StateUnavailable) else "/audit"
            reason = (
                f"Your answer to approval {approval_id!r} could not be recorded ({exc}); nothing "
                "ran. Repeat the call once the server's state store and audit log are back."
            )
            return await asyncio.to_thread(self.gate.refuse, call, rule=rule, reason=reason)
        return None

    @contextlib.asynccontextmanager
    async def gated(self, call: ToolCall, caller: Caller) -> AsyncIterator[_Ticket]:
        """Decide `call`, then settle it exactly once whatever the block does: as the block
        says (`ticket.settle`), `ok` when it ends without saying, `cancelled` when the call is
        cancelled (the run used its sandbox: counted), `refused` when it raised a caller's
        error, `infra_error` for anything else (both rolled back: nothing counted)."""
        decision = await self.decide(call, caller)
        if isinstance(decision, Denied):
            refused = Refused(decision.rule, decision.reason, decision.retry_after_s)
            yield _Ticket(self, None, refused)
            return
        ticket = _Ticket(self, decision, None)
        try:
            yield ticket
        except asyncio.CancelledError:
            # The client cancelled (or gave up on) the call: the engine has stopped the run
            # and restored its sandbox. No answer goes out for a cancelled request.
            ticket.settle("cancelled", outcome="cancelled")
            await ticket.finished()
            raise
        except RunnerError as exc:
            ticket.settle("refused", outcome="refused", error=str(exc))
            await ticket.finished()
            raise
        except GeneratorExit:  # closed without running its block to an end: nothing awaits
            ticket.settle("infra_error", outcome="infra_error", error="GeneratorExit")
            raise
        except BaseException as exc:
            ticket.settle("infra_error", outcome="infra_error", error=_named(exc))
            await ticket.finished()
            raise
        ticket.settle("ok")
        await ticket.finished()  # the answer goes out once its outcome is recorded

    async def run_program(
        self,
        tool: str,
        raw: Mapping[str, Any],
        caller: Caller,
        session: Session,
        program: Program,
        *,
        requested_timeout_s: float | None = None,
        requested_memory_bytes: int | None = None,
        before_run: Callable[[], Told | None] | None = None,
    ) -> Outcome:
        """Gate, run and settle one program on the engine the gate's plan names."""
        call = ToolCall(
            tool=tool,
            args=dict(raw),
            grant=caller.grant,
            session=session.id,
            program=program,
            workspace=replace(session.workspace, mounts=self._host_mounts),
            requested_timeout_s=requested_timeout_s,
            requested_memory_bytes=requested_memory_bytes,
            default_state=TOOLS_BY_NAME[tool].state,
        )
        async with self.gated(call, caller) as ticket:
            if ticket.refused is not None:
                return ticket.refused
            plan = ticket.plan
            assert plan is not None  # a call with a program always gets a plan
            _trace().engine = plan.engine
            try:
                early = before_run() if before_run is not None else None
                if early is not None:
                    ticket.settle("not_run")
                    return early
                engine = await self.engines.get(plan.engine_key)
                engine.capabilities.check(engine.name, plan)
                assert ticket.decision is not None
                async with (
                    self.admission.slot(caller.grant, plan.pool_share),
                    self.egress.leased(ticket.decision, plan) as (plan, leased),
                ):
                    result = await engine.run(plan)
                if leased is not None:
                    result = with_network(result, leased)
                shown = Shown()
                if _trace().for_model:
                    result, shown = await self._fit(plan, result)
                settled = await settle_workspace(
                    plan,
                    result,
                    end_session=lambda: self.engines.end_session(plan.session_key),
                    record=lambda used: self.sessions.record_usage(
                        plan.grant, plan.session_id, used.bytes
                    ),
                )
                if settled is not result:  # the workspace was emptied: no saved output left
                    shown = Shown(notes=shown.notes)
                result = settled
            except CapabilityMissing as exc:
                ticket.settle("refused", outcome="refused", error=str(exc))
                return Refused(f"/engines/{plan.profile}", str(exc))
            except (EngineBusy, Busy) as exc:
                _trace().busy = True
                ticket.settle("infra_error", outcome="infra_error", error=_named(exc))
                return BusyOutcome(_infra_text(plan.engine, exc), exc.retry_after_s)
            except (SandboxError, OSError) as exc:
                ticket.settle("infra_error", outcome="infra_error", error=_named(exc))
                return Failed(_infra_text(plan.engine, exc))
            usage: dict[str, Any] = {
                "wall_ms": result.usage.wall_ms,
                "cpu_ms": result.usage.cpu_ms,
                "peak_memory_bytes": result.usage.peak_memory_bytes,
            }
            network = result.usage.network
            if network is not None:
                usage["network"] = {
                    "bytes_up": network.bytes_up,
                    "bytes_down": network.bytes_down,
                    "connections": network.connections,
                    "refused": len(network.refused),
                }
                shown = replace(shown, notes=(*shown.notes, *network.refused))
            moved = 0 if network is None else network.bytes_up + network.bytes_down
            ticket.settle(result.status, usage=usage, egress_bytes=moved)
            return Ran(result, plan.engine_key, shown)

    async def _fit_told(self, told: Told, grant: str) -> Told:
        """`told` with its images within `server.result_image_bytes` (a note for each one
        scaled or left out)."""
        cap = self.gate.policy.server.result_image_bytes
        fitted = await HOST_IO.call(grant, lambda: [fit_image(i, cap) for i in told.images])
        notes = "".join(f"\nsandgate: {note}" for _, note in fitted if note)
        images = tuple(image for image, _ in fitted if image is not None)
        return replace(told, text=told.text + notes, images=images)

    async def _fit(self, plan: ExecutionPlan, result: RunResult) -> tuple[RunResult, Shown]:
        """`result` fitted to what one tool result gives the model (`server.result_*`): cut
        streams saved whole in the workspace (before it is measured), images scaled."""
        server = self.gate.policy.server
        if fits_whole(result, server.result_text_bytes):  # nothing to cut, save or scale
            return result, Shown()
        result = replace(result, workspace_usage=None)  # saving streams changes what it holds
        try:
            return await HOST_IO.call(
                plan.grant,
                lambda: fit_run(
                    result,
                    files=plan.workspace.files,
                    text_bytes=server.result_text_bytes,
                    image_bytes=server.result_image_bytes,
                ),
            )
        except (HostIOBusy, HostIOTimeout) as exc:  # cut without saving rather than not at all
            logger.warning("could not save the output of session %s: %s", plan.session_id, exc)
            budget = server.result_text_bytes // 2
            note = "the whole output could not be saved (the host's file operations are busy)"
            cut = replace(
                result,
                stdout=head_and_tail(result.stdout, budget),
                stderr=head_and_tail(result.stderr, budget),
                images=(),
            )
            unsent = tuple(
                f"image {i.path} not sent: the host's file operations are busy"
                for i in result.images
            )
            return cut, Shown(notes=(note, *unsent))

    def finish(
        self, decision: Allowed, outcome: Any, **details: Any
    ) -> asyncio.Future[None] | None:
        """Tell the gate how an allowed call ended (commit or roll back; audit): here, when
        that cannot wait on I/O, else in a thread (`Gate.finish_waits`: a rollback, Redis, an
        fsync), whose task is returned for the call to await. A lock another process holds
        on the state store, or a slow Redis, then delays only the calls that need them,
        never the event loop every client is served by."""
        waits = self.gate.finish_waits(
            decision, outcome=outcome, egress_bytes=details.get("egress_bytes", 0)
        )
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # settled while its task is finalized: no loop left to keep
            waits = False
        if not waits:
            self._finish(decision, outcome, details)
            return None
        return asyncio.ensure_future(asyncio.to_thread(self._finish, decision, outcome, details))

    def _finish(self, decision: Allowed, outcome: Any, details: Mapping[str, Any]) -> None:
        try:
            self.gate.finish(decision, outcome=outcome, **details)
        except Exception:
            logger.exception("could not record the outcome of decision %s", decision.decision_id)

    def engine_kind(self, tool: str) -> str:
        """The engine kind the policy routes `tool`'s code to (for package installs)."""
        return self.gate.route(tool)[0]


def served_tool_names(tool_sets: tuple[ToolSet, ...]) -> list[str]:
    """The tools of `tool_sets`, before the policy hides any."""
    return [n for n, s in TOOLS_BY_NAME.items() if s.tool_set in tool_sets]


def listed_tools(gate: Gate, names: list[str], grant: str) -> list[types.Tool]:
    """`Service.list_tools` for any holder of a gate (a cluster's front end has no engines)."""
    return [
        tool_of(TOOLS_BY_NAME[n], _route(gate, n, grant)) for n in gate.listed_tools(names, grant)
    ]


def _route(gate: Gate, name: str, grant: str) -> Route:
    kind, runtime = gate.route(name)
    limits, state = gate.terms(name, grant)
    return Route(
        engine=kind if runtime is None else f"{kind}:{runtime}",
        state=state or TOOLS_BY_NAME[name].state,
        timeout_s=limits.wall_timeout_s,
        network=limits.network,
        result_text_bytes=gate.policy.server.result_text_bytes,
        egress_allow=gate.egress_allow(name, grant),
    )


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _infra_text(engine: str, exc: BaseException) -> str:
    if isinstance(exc, (EngineBusy, Busy)):
        return (
            f"Error: the server is busy; retry after {exc.retry_after_s:g} s. "
            "Nothing was counted against your limits."
        )
    if isinstance(exc, OSError):  # the workspace (disk full, unwritable), not the sandbox
        reason = exc.strerror or type(exc).__name__
        return (
            f"Error: the server could not use this session's workspace ({reason}), so the code "
            "did not run. This is a server problem, not your code's; nothing was counted "
            "against your limits."
        )
    return (
        f"Error: the {engine} sandbox failed before the code finished: {exc}. "
        "This is a server problem, not your code's; nothing was counted against your limits."
    )
