"""The transport-independent core: validate a tool call, ask the gate, run the plan, format it."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import mcp_types as types

from policies import (
    Allowed,
    ApprovalRefused,
    AuditUnavailable,
    Denied,
    Gate,
    NeedsApproval,
    StateUnavailable,
    ToolCall,
)
from sandboxes import EngineBusy, Program, RunResult, SandboxError, session_key

from . import _format, _paths
from ._admission import Admission, Busy
from ._arguments import (
    PipInstallPackageArgs,
    RunCodeArgs,
    RunPythonCodeArgs,
    RunPythonFileArgs,
    SaveToFileAndRunArgs,
    as_float,
    check_request_size,
    validate_arguments,
)
from ._disk import settle_workspace
from ._engines import Engines
from ._errors import ArgumentError, ServerLimit, UnknownTool
from ._installs import Installer, InstallRefused
from ._metrics import Metrics
from ._mounts import MountPoint
from ._pyodide_tools import PyodideTools
from ._sessions import Session, Sessions
from ._tools import TOOLS_BY_NAME, ToolSet

logger = logging.getLogger("sandgate.service")

DEFAULT_RUN_SLOTS = 4
"""Runs admitted at once when the server does not say (it passes its engines' worker count)."""

Handler = Callable[[Mapping[str, Any], "Caller"], Awaitable[types.CallToolResult]]

Approver = Callable[[NeedsApproval], Awaitable[bool | None]]
"""Asks a human about a call (MCP elicitation); True/False is the answer, None: cannot ask."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, and how a human can be asked about the call.

    Attributes:
        grant: The credential's grant name (`local` on stdio).
        session: The MCP session (or connection) id.
        approver: Asks the human over the connection's back-channel (legacy protocol).
        can_ask_input: The client takes `InputRequiredResult` elicitations (2026-07-28).
        answer: The client's answer to an approval, sent with this call (`request_state`
            and `input_responses`): (approval id as sent, or "" when none; approved?).
        elicitation: The client declared the elicitation capability (at initialize, or on
            this request); without it, nothing it sends is taken as a human's answer.
    """

    grant: str = "local"
    session: str = "local"
    approver: Approver | None = None
    can_ask_input: bool = False
    answer: tuple[str, bool] | None = None
    elicitation: bool = False


@dataclass(slots=True)
class _Trace:
    """What one call went through, for the metrics."""

    decision: str = "refused"
    status: str = "none"
    engine: str = "none"


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


class Service:
    """Serves the tools: one call = validate → gate → engine → format, every step accounted.

    Args:
        gate: The policy gate.
        engines: Engines by kind (`wasm`, `pyodide`, `container`).
        sessions: Session workspaces.
        installer: Installs packages from the mirror into session workspaces.
        tool_sets: Which tool sets are served.
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
    ) -> None:
        self.gate = gate
        self.admission = admission or Admission(DEFAULT_RUN_SLOTS)
        self.metrics = metrics or Metrics(self.pool_stats)
        self.engines = engines
        self.sessions = sessions
        self.installer = installer
        self._names = [n for n, s in TOOLS_BY_NAME.items() if s.tool_set in tool_sets]
        self.pyodide = PyodideTools(self, operator_mounts)
        self._host_mounts = tuple(m.host_mount() for m in operator_mounts)
        self._handlers: dict[str, Handler] = {
            "run_python_code": self._run_python_code,
            "save_to_file_and_run": self._save_to_file_and_run,
            "run_python_file": self._run_python_file,
            "pip_install_package": self._pip_install_package,
            "run_code": self._run_code,
            **self.pyodide.handlers(),
        }

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Each engine's pool figures, for the metrics."""
        stats: dict[str, dict[str, int]] = {}
        for name, engine in self.engines.running().items():
            figures = getattr(engine, "pool_stats", None)
            if callable(figures):
                stats[name] = dict(figures())
        return stats

    async def end_session(self, grant: str, session_id: str) -> bool:
        """End a session: its workspace is removed and its engines' state (a Pyodide
        interpreter) released. False when there was no such session."""
        session = await asyncio.to_thread(self.sessions.end, grant, session_id)
        await self.engines.end_session(session_key(grant, session_id))
        return session is not None

    async def end_named_session(self, grant: str, name: str) -> bool:
        """End the session `run_code(session=name)` made for `grant`."""
        return await self.end_session(grant, f"named:{name}")

    def tool_names(self) -> list[str]:
        """The tools this server lists (policy-hidden ones removed)."""
        return self.gate.visible_tools(self._names)

    def list_tools(self) -> list[types.Tool]:
        return [
            types.Tool(
                name=name,
                description=TOOLS_BY_NAME[name].description,
                input_schema=TOOLS_BY_NAME[name].schema(),
            )
            for name in self.tool_names()
        ]

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None, caller: Caller
    ) -> types.CallToolResult:
        """Serve one call. Never raises for anything a client can send, except `AskHuman`
        (only for a caller with `can_ask_input`), which the server turns into an elicitation."""
        trace = _Trace()
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
            self.metrics.latency.labels(tool, trace.engine).observe(time.perf_counter() - began)

    async def _serve(
        self, name: str, arguments: Mapping[str, Any] | None, caller: Caller
    ) -> types.CallToolResult:
        try:
            check_request_size(arguments, self.gate.policy.server.max_request_bytes)
            if name not in self._names:
                raise UnknownTool(name, self.tool_names())
            handler = self._handlers[name]
            result: types.CallToolResult = await handler(arguments or {}, caller)
            return result
        except (ArgumentError, UnknownTool, ServerLimit) as exc:
            rule = f"/arguments/{exc.argument}" if isinstance(exc, ArgumentError) else "/tools"
            if isinstance(exc, ServerLimit):
                rule = exc.rule
            safe_args = dict(arguments) if isinstance(arguments, Mapping) else {}
            refused = ToolCall(
                tool=name, args=safe_args, grant=caller.grant, session=caller.session
            )
            await asyncio.to_thread(self.gate.refuse, refused, rule=rule, reason=str(exc))
            return _format.error_result(f"Error: {exc}")
        except AskHuman:
            raise
        except Exception:  # the one tool boundary: log it, tell the client without internals
            logger.exception("internal error serving %s", name)
            return _format.error_result(
                f"Error: sandgate failed to serve '{name}' (an internal error, logged on the "
                "server). Nothing was counted against your limits."
            )

    # -- the shared path -------------------------------------------------------------------

    def session_of(self, caller: Caller, named: str | None = None) -> Session:
        """The caller's session (or the named one of its grant), made on first use."""
        session_id = caller.session if named is None else f"named:{named}"
        return self.sessions.get(caller.grant, session_id)

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
        decision = await asyncio.to_thread(self.gate.decide, call)
        self.metrics.gate_latency.observe(time.perf_counter() - began)
        if isinstance(decision, NeedsApproval):
            _trace().decision = "needs_approval"
            ask = decision.by == "client" and caller.elicitation
            answer = await caller.approver(decision) if ask and caller.approver else None
            if answer is None and ask and caller.can_ask_input and caller.answer is None:
                raise AskHuman(decision)
            if answer is not None:
                refused = await self._answer(call, caller, decision.approval_id, answer)
                if refused is not None:
                    return refused
                decision = await asyncio.to_thread(self.gate.decide, call)
            if isinstance(decision, NeedsApproval):
                return Denied(decision.decision_id, decision.rule, decision.reason)
        _trace().decision = "deny" if isinstance(decision, Denied) else "allow"
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

    async def execute(
        self,
        tool: str,
        raw: Mapping[str, Any],
        caller: Caller,
        session: Session,
        program: Program,
        *,
        requested_timeout_s: float | None = None,
        requested_memory_bytes: int | None = None,
        before_run: Callable[[], types.CallToolResult | None] | None = None,
    ) -> RunResult | types.CallToolResult:
        call = ToolCall(
            tool=tool,
            args=dict(raw),
            grant=caller.grant,
            session=session.id,
            program=program,
            workspace=replace(session.workspace, mounts=self._host_mounts),
            requested_timeout_s=requested_timeout_s,
            requested_memory_bytes=requested_memory_bytes,
        )
        decision = await self.decide(call, caller)
        if isinstance(decision, Denied):
            return _format.denied_result(
                decision.rule, decision.reason, structured=tool == "run_code"
            )
        plan = decision.plan
        assert plan is not None  # a call with a program always gets a plan
        _trace().engine = plan.engine
        try:
            early = before_run() if before_run is not None else None
            if early is not None:
                self.finish(decision, "completed", status="not_run")
                return early
            engine = await self.engines.for_plan(plan, self._runtime(plan.profile))
            async with self.admission.slot(caller.grant, plan.pool_share):
                result = await engine.run(plan)
            result = await settle_workspace(
                plan,
                result,
                end_session=lambda: self.engines.end_session(plan.session_key),
                record=lambda used: self.sessions.record_usage(
                    plan.grant, plan.session_id, used.bytes
                ),
            )
        except (SandboxError, OSError, Busy) as exc:
            self.finish(decision, "infra_error", error=f"{type(exc).__name__}: {exc}")
            _trace().status = "infra_error"
            if isinstance(exc, (EngineBusy, Busy)):
                return _format.busy_result(
                    _infra_text(plan.engine, exc), exc.retry_after_s, structured=tool == "run_code"
                )
            return _format.error_result(_infra_text(plan.engine, exc))
        except asyncio.CancelledError:
            # The client cancelled (or gave up on) the call: the engine has stopped the run and
            # restored its sandbox. It counts like any run that used resources; no answer goes
            # out for a cancelled request.
            self.finish(decision, "cancelled", status="cancelled")
            _trace().status = "cancelled"
            raise
        except BaseException as exc:
            self.finish(decision, "infra_error", error=f"{type(exc).__name__}: {exc}")
            raise
        usage = {"wall_ms": result.usage.wall_ms, "cpu_ms": result.usage.cpu_ms}
        usage["peak_memory_bytes"] = result.usage.peak_memory_bytes
        self.finish(decision, "completed", status=result.status, usage=usage)
        _trace().status = result.status
        return result

    def finish(self, decision: Allowed, outcome: Any, **details: Any) -> None:
        """Tell the gate how an allowed call ended (commit or roll back; audit)."""
        try:
            self.gate.finish(decision, outcome=outcome, **details)
        except Exception:
            logger.exception("could not record the outcome of decision %s", decision.decision_id)

    # -- Python Code Runner tools ------------------------------------------------------------

    async def _run_python_code(
        self, raw: Mapping[str, Any], caller: Caller
    ) -> types.CallToolResult:
        args = validate_arguments(RunPythonCodeArgs, raw)
        session = self.session_of(caller)
        program = Program("code", args.code, args.variable_to_return)
        outcome = await self.execute("run_python_code", raw, caller, session, program)
        if isinstance(outcome, types.CallToolResult):
            return outcome
        return _format.python_result(
            "run_python_code", outcome, variable=args.variable_to_return, label="python code"
        )

    async def _save_to_file_and_run(
        self, raw: Mapping[str, Any], caller: Caller
    ) -> types.CallToolResult:
        args = validate_arguments(SaveToFileAndRunArgs, raw)

        def write(files: Path, rel: str) -> types.CallToolResult | None:
            if not args.overwrite and _paths.exists(files, rel):
                return _format.text_result(f"File {args.file_name} already exists")
            _paths.write_text(files, rel, args.code)
            return None

        return await self._run_workspace_file(
            "save_to_file_and_run", raw, caller, args.file_name, args.variable_to_return, write
        )

    async def _run_python_file(
        self, raw: Mapping[str, Any], caller: Caller
    ) -> types.CallToolResult:
        args = validate_arguments(RunPythonFileArgs, raw)

        def present(files: Path, rel: str) -> types.CallToolResult | None:
            if _paths.exists(files, rel):
                return None
            return _format.error_result(
                f"Error running file: [Errno 2] No such file or directory: '{rel}' (the session "
                "workspace has no such file; save it first with save_to_file_and_run)"
            )

        return await self._run_workspace_file(
            "run_python_file", raw, caller, args.file_name, args.variable_to_return, present
        )

    async def _run_workspace_file(
        self,
        tool: Literal["save_to_file_and_run", "run_python_file"],
        raw: Mapping[str, Any],
        caller: Caller,
        file_name: str,
        variable: str | None,
        before_run: Callable[[Path, str], types.CallToolResult | None],
    ) -> types.CallToolResult:
        """Run a workspace `.py` file (after `before_run`, once the gate allowed the call)."""
        rel = _paths.check_file_name(file_name)
        session = self.session_of(caller)
        files = session.workspace.files
        _paths.refuse_links(files, rel)
        program = Program("file", rel, variable)
        outcome = await self.execute(
            tool, raw, caller, session, program, before_run=lambda: before_run(files, rel)
        )
        if isinstance(outcome, types.CallToolResult):
            return outcome
        return _format.python_result(tool, outcome, variable=variable, label=rel)

    async def _pip_install_package(
        self, raw: Mapping[str, Any], caller: Caller
    ) -> types.CallToolResult:
        args = validate_arguments(PipInstallPackageArgs, raw)
        session = self.session_of(caller)
        requested = self.installer.parse(args.package_name, argument="package_name")
        call = ToolCall(
            tool="pip_install_package", args=dict(raw), grant=caller.grant, session=session.id
        )
        decision = await self.decide(call, caller)
        if isinstance(decision, Denied):
            return _format.denied_result(decision.rule, decision.reason)
        try:
            message = await asyncio.to_thread(
                self.installer.install,
                requested,
                session.workspace,
                engine=self._engine_kind("run_python_code"),
            )
        except InstallRefused as exc:
            self.finish(decision, "completed", status="refused", error=str(exc))
            _trace().status = "refused"
            return _format.error_result(f"Error installing package {args.package_name}: {exc}")
        self.finish(decision, "completed", status="ok")
        _trace().status = "ok"
        return _format.text_result(message)

    def _runtime(self, profile: str) -> str | None:
        """The container runtime of an engine profile (`runsc` for gVisor), if it has one."""
        try:
            return self.gate.policy.profile(profile)[1]
        except KeyError:
            return None

    def _engine_kind(self, tool: str) -> str:
        """The engine kind that runs `tool`'s code under the current policy."""
        policy = self.gate.policy
        rule = policy.tools.get(tool)
        name = (rule.engine if rule else None) or (
            policy.all_tools.engine if policy.all_tools else None
        )
        kind, _runtime, _quotas = policy.profile(name or "wasm")
        return str(kind)

    # -- native tool ---------------------------------------------------------------------------

    async def _run_code(self, raw: Mapping[str, Any], caller: Caller) -> types.CallToolResult:
        args = validate_arguments(RunCodeArgs, raw)
        session = self.session_of(caller, args.session)
        files = session.workspace.files
        to_write: list[tuple[str, str]] = []
        for name, text in (args.files or {}).items():
            rel = _paths.check_file_name(name, argument=f"files.{name}", suffix="")
            _paths.refuse_links(files, rel, argument=f"files.{name}")
            to_write.append((rel, text))

        def write() -> None:
            for rel, text in to_write:
                _paths.write_text(files, rel, text)

        stdin = (args.stdin or "").encode("utf-8")
        program = Program("code", args.code, None, stdin)
        timeout = None if args.timeout_s is None else as_float(args.timeout_s)
        if timeout is not None and timeout <= 0:
            raise ArgumentError("timeout_s", "a number of seconds above 0", repr(args.timeout_s))
        if args.memory_mb is not None and args.memory_mb <= 0:
            raise ArgumentError("memory_mb", "a whole number of MiB above 0", repr(args.memory_mb))
        memory = None if args.memory_mb is None else args.memory_mb * 1024 * 1024
        outcome = await self.execute(
            "run_code",
            raw,
            caller,
            session,
            program,
            requested_timeout_s=timeout,
            requested_memory_bytes=memory,
            before_run=lambda: write(),
        )
        if isinstance(outcome, types.CallToolResult):
            return outcome
        return _format.run_code_result(outcome)


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
