"""A fake engine for unit tests of the gate, the tools and the formatter. Runs nothing."""

from __future__ import annotations

from collections.abc import Callable

from ._engine import Capabilities, EngineLifecycle, PoolStats
from ._types import ExecutionPlan, RunResult, Usage

Responder = Callable[[ExecutionPlan], RunResult]


def _echo(plan: ExecutionPlan) -> RunResult:
    return RunResult(status="ok", stdout="", stderr="", exit_code=0, usage=Usage(wall_ms=0.0))


class FakeEngine(EngineLifecycle):
    """Records every plan it is given and answers with `respond(plan)`.

    Attributes:
        plans: Every plan `run` received, in order.
        ended: Every session key `end_session` was told of, in order.
    """

    def __init__(
        self,
        respond: Responder = _echo,
        *,
        name: str = "fake",
        capabilities: Capabilities | None = None,
    ) -> None:
        self.name = name
        self.capabilities = capabilities or Capabilities(
            persistent_state=True, networks=frozenset({"none", "mirror"})
        )  # by default it takes every plan: what a test of the gate or the tools sends
        self.plans: list[ExecutionPlan] = []
        self.ended: list[str] = []
        self._respond = respond
        self._started = False

    @property
    def ready(self) -> bool:
        return self._started and not self._closed

    async def start(self) -> None:
        self._refuse_if_closed()
        self._started = True

    async def run(self, plan: ExecutionPlan) -> RunResult:
        self._refuse_if_closed()
        self.capabilities.check(self.name, plan)
        self.plans.append(plan)
        return self._respond(plan)

    async def end_session(self, key: str) -> bool:
        self.ended.append(key)
        return False

    def pool_stats(self) -> PoolStats:
        return {"plans": len(self.plans)}

    async def aclose(self) -> None:
        self._closed = True
