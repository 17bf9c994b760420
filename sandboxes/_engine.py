"""The engine contract every sandbox implements: `run(plan) -> RunResult`, `aclose()`, and the
async-context-manager behaviour (start on enter, close on exit) they share."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from ._types import ExecutionPlan, RunResult


@runtime_checkable
class Engine(Protocol):
    """A sandbox engine. It runs only `ExecutionPlan`s and returns a `RunResult` for anything
    the user's code does; it raises a `SandboxError` only for its own failures."""

    name: str

    async def start(self) -> None:
        """Prepare the engine (compile, warm a pool). Safe to call twice."""
        ...

    async def run(self, plan: ExecutionPlan) -> RunResult:
        """Run one plan in a fresh sandbox and say how it ended."""
        ...

    async def aclose(self) -> None:
        """Stop every sandbox and release every resource."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class EngineLifecycle:
    """`async with engine:` starts it on entry and closes it on exit. Engines inherit this."""

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

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
