"""The engines a server runs, by key (`wasm`, `pyodide`, `container:runc`, `container:runsc`),
started when the policy first routes a tool to them; a missing one fails only its own calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from policies import Policy
from sandboxes import Engine, EngineUnavailable, ExecutionPlan, SandboxError, WasmEngine

logger = logging.getLogger("sandgate.engines")

Factory = Callable[[], Engine]
Progress = Callable[[str], None]


def engine_key(kind: str, runtime: str | None) -> str:
    """The key of an engine: its kind, and for containers the runtime (`container:runsc`)."""
    return f"container:{runtime or 'runc'}" if kind == "container" else kind


def default_factories(
    *, workers: int, state_dir: Path, progress: Progress, prepared_guests: bool = True
) -> dict[str, Factory]:
    """How to make each engine this server can run."""

    def wasm() -> Engine:
        return WasmEngine(
            workers=workers,
            progress=progress,
            # Beside the workspaces, on their file system: a session's files move into a slot.
            slots_dir=state_dir / "wasm-slots",
            prepare_guests=prepared_guests,
        )

    def pyodide() -> Engine:
        from sandboxes.pyodide import PyodideEngine

        return PyodideEngine(progress=progress)

    def container(runtime: str) -> Factory:
        def make() -> Engine:
            from sandboxes.container import ContainerEngine

            return ContainerEngine(
                runtime=runtime,  # type: ignore[arg-type]
                pool_dir=state_dir / f"container-pool-{runtime}",
                progress=progress,
            )

        return make

    return {
        "wasm": wasm,
        "pyodide": pyodide,
        "container:runc": container("runc"),
        "container:runsc": container("runsc"),
    }


def policy_engine_keys(policy: Policy, tools: Iterable[str]) -> list[str]:
    """The engines a policy routes the served `tools` to (always `wasm`, the default)."""
    served = set(tools)
    names = {rule.engine for name, rule in policy.tools.items() if rule.engine and name in served}
    if policy.all_tools is not None and policy.all_tools.engine:
        names.add(policy.all_tools.engine)
    keys = {"wasm"}
    for name in names:
        try:
            kind, runtime, _quotas = policy.profile(name)
        except KeyError:
            continue
        keys.add(engine_key(kind, runtime))
    return sorted(keys)


class Engines:
    """Creates, starts and closes engines on demand, remembering why one could not start.

    Args:
        factories: How to make each engine, by key.
        ready: Engines already running (tests pass a shared one); never closed here.
    """

    def __init__(
        self, factories: Mapping[str, Factory], *, ready: Mapping[str, Engine] | None = None
    ) -> None:
        self._factories = dict(factories)
        self._borrowed = dict(ready or {})
        self._owned: dict[str, Engine] = {}
        self._failed: dict[str, str] = {}
        self._lock = asyncio.Lock()

    def running(self) -> dict[str, Engine]:
        """Every engine started so far, by key."""
        return {**self._owned, **self._borrowed}

    async def start(self, keys: Iterable[str]) -> None:
        """Start the engines `keys` names; a failure is logged and kept for their calls."""
        for key in keys:
            try:
                await self.get(key)
            except SandboxError as exc:
                logger.error("engine %s is unavailable: %s", key, exc)

    async def get(self, key: str) -> Engine:
        """The running engine `key`, started on first use.

        Raises:
            EngineUnavailable: this server cannot run that engine (the message says why).
        """
        engine = self._borrowed.get(key) or self._owned.get(key)
        if engine is not None:
            return engine
        async with self._lock:
            if key in self._owned:
                return self._owned[key]
            if key in self._failed:
                raise EngineUnavailable(self._failed[key])
            factory = self._factories.get(key)
            if factory is None:
                known = ", ".join(sorted({*self._factories, *self._borrowed}))
                raise EngineUnavailable(
                    f"the policy routes this call to the '{key}' engine, which this server "
                    f"does not run (it runs: {known}); change the tool's engine in the policy"
                )
            engine = factory()
            try:
                await engine.start()
            except SandboxError as exc:
                self._failed[key] = f"the {key} engine could not start: {exc}"
                await engine.aclose()
                raise EngineUnavailable(self._failed[key]) from exc
            self._owned[key] = engine
            return engine

    async def for_plan(self, plan: ExecutionPlan, runtime: str | None) -> Engine:
        """The engine that runs `plan` (`runtime` picks the container runtime)."""
        return await self.get(engine_key(plan.engine, runtime))

    async def end_session(self, key: str) -> None:
        """Tell every running engine that keeps per-session state (Pyodide) the session whose
        `session_key` is `key` ended."""
        for name, engine in self.running().items():
            end = getattr(engine, "end_session", None)
            if end is None:
                continue
            try:
                await end(key)
            except SandboxError as exc:
                logger.warning("engine %s could not end session %r: %s", name, key, exc)

    async def aclose(self) -> None:
        """Close the engines started here (not borrowed ones)."""
        owned, self._owned = self._owned, {}
        await asyncio.gather(*(e.aclose() for e in owned.values()), return_exceptions=True)
