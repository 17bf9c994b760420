"""The engine contract every sandbox keeps, written out: what an engine can do
(`Capabilities`), how it is started, asked to run a plan, told a session ended, asked for its
pool figures and closed. The conformance suite (`tests/conformance/`) checks every engine
against it; routing a tool to another engine changes nothing a client sees but speed and the
boundary.

Lifecycle, the same on every engine:

- `start()` prepares the engine; calling it twice is harmless. `ready` says whether it can
  run plans now.
- `run(plan)` runs one plan and returns a `RunResult` for anything the code did (failure of the
  code is data, never an exception); it raises a `SandboxError` only for the engine's own
  failures, and `CapabilityMissing` (before anything runs) when the plan needs something
  the engine lacks: never a silently different answer.
- `end_session(key)` releases what the engine keeps for one session (`ExecutionPlan.session_key`).
- `save_state(key, folder)` writes the session's live interpreter into a folder and
  `load_state(key, grant, folder)` makes a saved one the session's (its next persistent run
  continues from it): snapshots, forks and idle interpreters paused to disk. An engine without
  `capabilities.snapshots` raises `CapabilityMissing` from both.
- `pool_stats()` gives the engine's pool figures by name, for `/metrics`.
- `aclose()` stops every sandbox and releases every resource; afterwards `start()` and `run()`
  raise `EngineClosed` (an engine is not restarted: make a new one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from ._errors import CapabilityMissing, EngineClosed
from ._types import ExecutionPlan, NetworkMode, RunResult

PoolStats = Mapping[str, int]
"""An engine's pool figures by name (workers, idle, sessions, …), as `/metrics` shows them."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can do beyond running a program under `Limits`.

    Attributes:
        final_expression: Gives the value of the code's final expression
            (`Program.final_expression`), as a REPL does.
        persistent_state: Keeps a session's interpreter (globals, imports) between its runs.
        mounts: Shows operator folders (`WorkspacePaths.mounts`) at `/mnt/NAME`.
        snapshots: Saves a session's live interpreter (globals, imports, objects) to a folder
            and resumes it from there, in the same session or another (`save_state`,
            `load_state`).
        networks: The `Limits.network` modes it enforces.
    """

    final_expression: bool = True
    persistent_state: bool = False
    mounts: bool = True
    snapshots: bool = False
    networks: frozenset[NetworkMode] = field(default_factory=lambda: frozenset({"none"}))

    def missing(self, plan: ExecutionPlan) -> list[str]:
        """The capabilities `plan` needs that these lack, by name (`network=mirror`)."""
        lacking: list[str] = []
        program = plan.program
        wants_value = program.final_expression and program.variable_to_return is None
        if wants_value and program.kind == "code" and not self.final_expression:
            lacking.append("final_expression")
        if plan.workspace.mounts and not self.mounts:
            lacking.append("mounts")
        if plan.state == "persistent" and not self.persistent_state:
            lacking.append("persistent_state")
        if plan.limits.network not in self.networks:
            lacking.append(f"network={plan.limits.network}")
        return lacking

    def check(self, engine: str, plan: ExecutionPlan) -> None:
        """Refuse `plan` before it runs when it needs a capability `engine` lacks.

        Raises:
            CapabilityMissing: names the engine and every capability it lacks.
        """
        lacking = self.missing(plan)
        if lacking:
            raise CapabilityMissing(engine, tuple(lacking))


@runtime_checkable
class Engine(Protocol):
    """A sandbox engine. It runs only `ExecutionPlan`s and returns a `RunResult` for anything
    the user's code does; it raises a `SandboxError` only for its own failures."""

    name: str
    capabilities: Capabilities

    @property
    def ready(self) -> bool:
        """Whether `run` can start a plan now (started, not failed, not closed)."""
        ...

    async def start(self) -> None:
        """Prepare the engine (compile, warm a pool). Safe to call twice.

        Raises:
            EngineClosed: after `aclose`.
        """
        ...

    async def run(self, plan: ExecutionPlan) -> RunResult:
        """Run one plan and say how it ended.

        Raises:
            CapabilityMissing: the plan needs what this engine cannot do; nothing ran.
            EngineClosed: after `aclose`.
            SandboxError: the engine's own failure (never the code's).
        """
        ...

    async def end_session(self, key: str) -> bool:
        """Release what the engine keeps for the session `key`; False if it kept nothing."""
        ...

    async def save_state(self, key: str, folder: Path) -> bool:
        """Save the live interpreter of session `key` into `folder` (an empty folder the caller
        owns), waiting for a run of the session to end; the interpreter stays live, and a
        session whose interpreter was paused to disk is saved from there. False when the
        session holds no interpreter (nothing saved).

        Raises:
            CapabilityMissing: the session holds a live interpreter and the engine cannot save
                interpreters (`snapshots`).
            EngineClosed: after `aclose`.
            SandboxError: the interpreter could not be saved (say why).
        """
        ...

    async def load_state(self, key: str, grant: str, folder: Path) -> None:
        """Make the interpreter saved in `folder` (by `save_state` of an engine of the same
        kind) the interpreter of session `key` of `grant`: the session's live interpreter, if
        any, ends, and its next persistent run continues from the saved one (`state: kept`).
        `folder` is only read during the call (the caller may delete it afterwards).

        Raises:
            CapabilityMissing: the engine cannot load interpreters (`snapshots`).
            StateImageRefused: `folder` holds no interpreter this engine can resume (another
                engine's, another build's); nothing changed.
            EngineClosed: after `aclose`.
        """
        ...

    def pool_stats(self) -> PoolStats:
        """The engine's pool figures by name."""
        ...

    async def aclose(self) -> None:
        """Stop every sandbox and release every resource. Safe to call twice."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class EngineLifecycle:
    """`async with engine:` starts it on entry and closes it on exit, and the closed state
    every engine shares: `_refuse_if_closed()` raises `EngineClosed` after `aclose`.
    Engines inherit this."""

    name: str
    _closed: bool = False

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._closed

    def _refuse_if_closed(self) -> None:
        """Raise `EngineClosed` when the engine was closed."""
        if self._closed:
            raise EngineClosed(self.name)

    def _holds_interpreter(self, key: str) -> bool:
        """Whether the engine keeps a live interpreter for session `key` (engines that keep
        interpreters but cannot save them say so here)."""
        return False

    async def save_state(self, key: str, folder: Path) -> bool:
        """Engines without `capabilities.snapshots`: nothing to save (False) when they hold no
        interpreter of the session, else they refuse (`CapabilityMissing`)."""
        self._refuse_if_closed()
        if not self._holds_interpreter(key):
            return False
        raise CapabilityMissing(self.name, ("snapshots",))

    async def load_state(self, key: str, grant: str, folder: Path) -> None:
        """Engines without `capabilities.snapshots` refuse (`CapabilityMissing`)."""
        self._refuse_if_closed()
        raise CapabilityMissing(self.name, ("snapshots",))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
