"""A fake engine for unit tests of the gate, the tools and the formatter. Runs nothing."""

from __future__ import annotations

from collections.abc import Callable

from ._engine import EngineLifecycle
from ._types import ExecutionPlan, RunResult, Usage

Responder = Callable[[ExecutionPlan], RunResult]


def _echo(plan: ExecutionPlan) -> RunResult:
    return RunResult(status="ok", stdout="", stderr="", exit_code=0, usage=Usage(wall_ms=0.0))


class FakeEngine(EngineLifecycle):
    """Records every plan it is given and answers with `respond(plan)`.

    Attributes:
        plans: Every plan `run` received, in order.
    """

    def __init__(self, respond: Responder = _echo, *, name: str = "fake") -> None:
        self.name = name
        self.plans: list[ExecutionPlan] = []
        self._respond = respond
        self.closed = False

    async def start(self) -> None:
        return None

    async def run(self, plan: ExecutionPlan) -> RunResult:
        self.plans.append(plan)
        return self._respond(plan)

    async def aclose(self) -> None:
        self.closed = True
