"""The engines a server runs, by key (`wasm`, `pyodide`, `container:runc`, `container:runsc`),
started when the policy first routes a tool to them; a missing one fails only its own calls."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from policies import Gate
from sandboxes import (
    CATALOG,
    DEFAULT_ENGINE,
    Engine,
    EngineSettings,
    EngineUnavailable,
    SandboxError,
    engine_key,
)

logger = logging.getLogger("sandgate.engines")

Factory = Callable[[], Engine]
Progress = Callable[[str], None]


def default_factories(
    *,
    workers: int,
    state_dir: Path,
    progress: Progress,
    prepared_guests: bool = True,
    embedded_guests: bool = True,
    require: Mapping[str, frozenset[str]] | None = None,
) -> dict[str, Factory]:
    """How to make each engine of the catalog, with this server's settings (`require`: the
    boundary layers each engine must have, by key, from `policies.engine_requirements`)."""
    settings = EngineSettings(
        workers=workers,
        state_dir=state_dir,
        progress=progress,
        prepare_guests=prepared_guests,
        embedded_guests=embedded_guests,
        require=require,
    )
    return {key: functools.partial(entry.make, settings) for key, entry in CATALOG.items()}


def routed_engine_keys(gate: Gate, tools: Iterable[str]) -> list[str]:
    """The engines the gate routes the served `tools` to, and always the default one."""
    return sorted({DEFAULT_ENGINE, *(engine_key(*gate.route(tool)) for tool in tools)})


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
            except BaseException:  # cancelled (the server stops while it starts): close it
                await asyncio.shield(engine.aclose())
                raise
            self._owned[key] = engine
            return engine

    async def end_session(self, key: str) -> None:
        """Tell every running engine the session whose `session_key` is `key` ended."""
        for name, engine in self.running().items():
            try:
                await engine.end_session(key)
            except SandboxError as exc:
                logger.warning("engine %s could not end session %r: %s", name, key, exc)

    async def aclose(self) -> None:
        """Close the engines started here (not borrowed ones)."""
        owned, self._owned = self._owned, {}
        await asyncio.gather(*(e.aclose() for e in owned.values()), return_exceptions=True)
